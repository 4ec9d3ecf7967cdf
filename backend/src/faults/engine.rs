//! The fault engine: deterministic decisions for each request and each clock tick.
//!
//! Randomness is counter based: every draw is `mix(seed, fault id, opportunity number,
//! stream)`, so a fault's decisions depend only on the seed and the order of the requests
//! it matches, never on other faults or on threads.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::plan::{
    opcode_name, DataDirection, DelayDist, FaultAction, FaultKind, FaultSpec, NewCommandPolicy,
    Plan, RequestClass, StatusOverride, TmfFailure, TmfKind, Trigger, VirtioEvent,
};
use super::trace::{Trace, TraceError, TraceEvent, TraceRecord};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("no fault with id {0}")]
    NoSuchFault(u32),
    #[error("fault kind `corrupt` needs `allow_corruption = true` in the plan")]
    CorruptionNotAllowed,
}

/// The backend's start; every `now` the engine takes is time since this.
#[derive(Debug, Clone, Copy)]
pub struct Epoch(Instant);

impl Epoch {
    pub fn start() -> Epoch {
        Epoch(Instant::now())
    }

    pub fn now(&self) -> Duration {
        self.0.elapsed()
    }
}

/// What a request on a virtqueue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    Command,
    Tmf(TmfKind),
    /// Asynchronous notification query or subscribe.
    An,
}

/// What the engine needs to know about a request. Plain values, so building one is free.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestInfo {
    pub queue: u16,
    /// The virtio-scsi request `id` (tag).
    pub id: u64,
    pub kind: RequestKind,
    pub target: u8,
    pub lun: u16,
    pub opcode: Option<u8>,
    /// First block and number of blocks, for reads and writes.
    pub lba: Option<(u64, u64)>,
    pub direction: DataDirection,
    /// Bytes of data-in or data-out.
    pub transfer_len: u32,
}

impl RequestInfo {
    pub fn command(queue: u16, id: u64, target: u8, lun: u16, opcode: u8) -> RequestInfo {
        RequestInfo {
            queue,
            id,
            kind: RequestKind::Command,
            target,
            lun,
            opcode: Some(opcode),
            lba: None,
            direction: DataDirection::None,
            transfer_len: 0,
        }
    }

    pub fn tmf(queue: u16, id: u64, tmf: TmfKind, target: u8, lun: u16) -> RequestInfo {
        RequestInfo {
            kind: RequestKind::Tmf(tmf),
            opcode: None,
            ..RequestInfo::command(queue, id, target, lun, 0)
        }
    }

    pub fn an(queue: u16, id: u64, target: u8, lun: u16) -> RequestInfo {
        RequestInfo {
            kind: RequestKind::An,
            opcode: None,
            ..RequestInfo::command(queue, id, target, lun, 0)
        }
    }

    pub fn with_lba(self, start: u64, blocks: u64) -> RequestInfo {
        RequestInfo {
            lba: Some((start, blocks)),
            ..self
        }
    }

    pub fn with_data(self, direction: DataDirection, transfer_len: u32) -> RequestInfo {
        RequestInfo {
            direction,
            transfer_len,
            ..self
        }
    }
}

impl super::plan::Matcher {
    /// A handful of comparisons; no allocation (issue item 9).
    #[inline]
    pub fn matches(&self, r: &RequestInfo) -> bool {
        if !self.queue.matches(r.queue) {
            return false;
        }
        let class_ok = match (self.class, r.kind) {
            (RequestClass::Any, _) => true,
            (RequestClass::Command, RequestKind::Command) => true,
            (RequestClass::Tmf(None), RequestKind::Tmf(_)) => true,
            (RequestClass::Tmf(Some(want)), RequestKind::Tmf(got)) => want == got,
            (RequestClass::An, RequestKind::An) => true,
            _ => false,
        };
        if !class_ok
            || self.target.is_some_and(|t| t != r.target)
            || self.lun.is_some_and(|l| l != r.lun)
            || self.opcode.is_some_and(|o| Some(o) != r.opcode)
            || self.direction.is_some_and(|d| d != r.direction)
        {
            return false;
        }
        match (self.lba, r.lba) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some((lo, hi)), Some((start, blocks))) => {
                let last = start.saturating_add(blocks.max(1) - 1);
                start <= hi && last >= lo
            }
        }
    }
}

/// How a command completes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Completion {
    #[default]
    Normal,
    /// Never complete; only ABORT_TASK, a LU or nexus reset, or a device reset ends it.
    Lose,
    Status(StatusOverride),
    Corrupt(Corruption),
}

/// Deterministic corruption of a data buffer (reads: what the guest gets; writes: what is
/// stored).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corruption {
    pub seed: u64,
    /// Number of byte positions to flip (positions may repeat on tiny buffers).
    pub bytes: u32,
}

impl Corruption {
    pub fn apply(&self, buf: &mut [u8]) {
        if buf.is_empty() {
            return;
        }
        for i in 0..u64::from(self.bytes) {
            let x = splitmix64(self.seed ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let pos = (x % buf.len() as u64) as usize;
            // A zero mask would leave the byte intact.
            let mask = ((x >> 32) as u8).max(1);
            buf[pos] ^= mask;
        }
    }
}

/// How a TMF is answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TmfOutcome {
    #[default]
    Normal,
    /// Answer after `duration`; meanwhile the engine applies `new_commands` to the LU
    /// (the whole target for an I_T nexus reset).
    Slow {
        duration: Duration,
        new_commands: NewCommandPolicy,
    },
    /// Never answer until a device reset.
    Hang,
    Fail(TmfFailure),
}

/// The engine's verdict on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RequestDecision {
    /// Wait this long before completing (zero: no delay).
    pub delay: Duration,
    pub completion: Completion,
    /// Put the completion on the used ring but do not signal the call eventfd.
    pub drop_interrupt: bool,
    pub tmf: TmfOutcome,
}

impl RequestDecision {
    pub fn is_normal(&self) -> bool {
        *self == RequestDecision::default()
    }
}

/// What a tick asks the request path to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickAction {
    /// Write the queue's call eventfd `count` times with no new used entry.
    SpuriousSignal { queue: u16, count: u32 },
    /// Put this event on the event queue.
    PostEvent(VirtioEvent),
}

/// Whether a completion signalled the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalOutcome {
    Sent,
    /// A `drop-interrupt` fault suppressed it.
    SuppressedByFault,
    /// EVENT_IDX said the guest did not ask for it.
    SuppressedByEventIdx,
}

/// Decisions taken, per fault kind (serialized with the kinds' plan names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub struct KindCounts {
    pub drop_interrupt: u64,
    pub delay: u64,
    pub lose: u64,
    pub slow_tmf: u64,
    pub hang_tmf: u64,
    pub fail_tmf: u64,
    pub spurious_interrupt: u64,
    pub status: u64,
    pub event: u64,
    pub corrupt: u64,
}

impl KindCounts {
    pub fn get_mut(&mut self, kind: FaultKind) -> &mut u64 {
        match kind {
            FaultKind::DropInterrupt => &mut self.drop_interrupt,
            FaultKind::Delay => &mut self.delay,
            FaultKind::Lose => &mut self.lose,
            FaultKind::SlowTmf => &mut self.slow_tmf,
            FaultKind::HangTmf => &mut self.hang_tmf,
            FaultKind::FailTmf => &mut self.fail_tmf,
            FaultKind::SpuriousInterrupt => &mut self.spurious_interrupt,
            FaultKind::Status => &mut self.status,
            FaultKind::Event => &mut self.event,
            FaultKind::Corrupt => &mut self.corrupt,
        }
    }
}

/// Counters, read by the control socket's `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub commands: u64,
    pub tmfs: u64,
    pub an_requests: u64,
    pub completions: u64,
    /// Faults applied, per kind.
    pub fired: KindCounts,
    /// Faults that fired but lost to an earlier one deciding the same thing.
    pub shadowed: u64,
    /// Commands answered BUSY, or held, because a slow TMF was in progress on their LU.
    pub busy_during_slow_tmf: u64,
    pub held_during_slow_tmf: u64,
    pub signals_sent: u64,
    pub signals_suppressed_fault: u64,
    pub signals_suppressed_event_idx: u64,
    pub spurious_signals: u64,
    pub events_posted: u64,
    /// Events that found no way onto the event queue (trace `event-lost`).
    #[serde(default)]
    pub events_lost: u64,
    pub tmfs_answered: u64,
    pub device_resets: u64,
    pub trace_errors: u64,
}

/// A fault in the engine with its counters.
#[derive(Debug)]
struct Rule {
    id: u32,
    spec: FaultSpec,
    time_driven: bool,
    /// Matches (or scheduled opportunities) seen while state and window allowed.
    seen: u64,
    fired: u64,
    /// Next scheduled opportunity of a time-driven fault; `None` once a one-shot is used.
    next_due: Option<Duration>,
}

impl Rule {
    fn new(id: u32, spec: FaultSpec) -> Rule {
        let schedule = spec.action.schedule();
        Rule {
            id,
            time_driven: schedule.is_some(),
            next_due: schedule.map(|s| s.first),
            spec,
            seen: 0,
            fired: 0,
        }
    }
}

/// One fault as `list` shows it.
#[derive(Debug, Clone, Copy)]
pub struct FaultStatus<'a> {
    pub id: u32,
    pub seen: u64,
    pub fired: u64,
    pub spec: &'a FaultSpec,
}

/// LU (or, for a nexus reset, target) busy with a slow TMF.
#[derive(Debug, Clone, Copy)]
struct Quiesce {
    fault: u32,
    target: u8,
    lun: Option<u16>,
    until: Duration,
    policy: NewCommandPolicy,
}

// Separate random streams per use, so adding a draw for one use never shifts another.
const STREAM_PROBABILITY: u64 = 1;
const STREAM_DELAY: u64 = 2;
const STREAM_CORRUPT: u64 = 3;

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn draw(seed: u64, fault: u32, seq: u64, stream: u64) -> u64 {
    splitmix64(splitmix64(splitmix64(seed ^ stream.rotate_left(56)) ^ u64::from(fault)) ^ seq)
}

/// A draw as a number in [0, 1).
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

fn sample_delay(dist: DelayDist, x: u64) -> Duration {
    match dist {
        DelayDist::Fixed(d) => d,
        DelayDist::Uniform { min, max } => {
            let span = micros(max - min);
            min + Duration::from_micros(x % span.saturating_add(1))
        }
        DelayDist::LongTail { min, max, alpha } => {
            // Pareto: min / u^(1/alpha) with u in (0, 1], capped at max.
            let u = 1.0 - unit(x);
            let d = min.as_secs_f64() / u.powf(1.0 / alpha);
            if d.is_finite() && d < max.as_secs_f64() {
                Duration::from_secs_f64(d).max(min)
            } else {
                max
            }
        }
    }
}

/// Trigger evaluation: state, window, after, every, times, probability (plan.rs documents
/// the order). Counts the opportunity and the firing.
fn trigger_fires(
    t: &Trigger,
    id: u32,
    seen: &mut u64,
    fired: &mut u64,
    state: u32,
    seed: u64,
    now: Duration,
) -> bool {
    if t.state.is_some_and(|s| s != state) {
        return false;
    }
    if t.window
        .is_some_and(|(start, end)| now < start || now >= end)
    {
        return false;
    }
    *seen += 1;
    if *seen <= t.after {
        return false;
    }
    if t.every
        .is_some_and(|n| !(*seen - t.after).is_multiple_of(n))
    {
        return false;
    }
    if t.times.is_some_and(|max| *fired >= max) {
        return false;
    }
    if t.probability
        .is_some_and(|p| unit(draw(seed, id, *seen, STREAM_PROBABILITY)) >= p)
    {
        return false;
    }
    *fired += 1;
    true
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Write one trace record if tracing; an I/O error is counted and logged once, never fatal.
fn emit(trace: &mut Option<Trace>, stats: &mut Stats, now: Duration, event: TraceEvent<'_>) {
    if let Some(t) = trace {
        if let Err(e) = t.write(&TraceRecord {
            t_us: micros(now),
            event,
        }) {
            if stats.trace_errors == 0 {
                log::error!("{e}; further trace errors are only counted");
            }
            stats.trace_errors += 1;
        }
    }
}

/// The fault engine. `Send`; share it behind a mutex or keep one per queue.
#[derive(Debug)]
pub struct FaultEngine {
    seed: u64,
    allow_corruption: bool,
    rules: Vec<Rule>,
    next_id: u32,
    /// blkdebug-style state; starts at 1.
    state: u32,
    quiesce: Vec<Quiesce>,
    pending_events: VecDeque<VirtioEvent>,
    stats: Stats,
    trace: Option<Trace>,
    /// Changes whenever what a [`CommandScreen`] summarizes may have changed: the rules
    /// (added, removed, enabled, disabled), the trace sink, or whether a slow TMF quiesces
    /// anything. Read without the engine's lock by the screens; written under it.
    generation: Arc<AtomicU64>,
}

impl Drop for FaultEngine {
    /// A screen still holding this engine's generation sees a change, and rebuilds from
    /// whatever engine is there now.
    fn drop(&mut self) {
        self.changed();
    }
}

impl FaultEngine {
    pub const INITIAL_STATE: u32 = 1;

    pub fn new(plan: Plan) -> FaultEngine {
        let mut engine = FaultEngine {
            seed: plan.seed,
            allow_corruption: plan.allow_corruption,
            rules: Vec::with_capacity(plan.faults.len()),
            next_id: 1,
            state: FaultEngine::INITIAL_STATE,
            // Room for the usual number of slow TMFs at once, so arming one does not allocate.
            quiesce: Vec::with_capacity(8),
            pending_events: VecDeque::new(),
            stats: Stats::default(),
            trace: None,
            generation: Arc::new(AtomicU64::new(0)),
        };
        for spec in plan.faults {
            let id = engine.next_id;
            engine.next_id += 1;
            engine.rules.push(Rule::new(id, spec));
        }
        engine
    }

    /// Start (or stop) tracing.
    pub fn set_trace(&mut self, trace: Option<Trace>) {
        self.trace = trace;
        self.changed();
    }

    /// Something a [`CommandScreen`] summarizes may have changed. Release: a screen that
    /// reads the new generation rebuilds under the lock, which sees the change anyway; the
    /// ordering only keeps the counter from running ahead of what it announces.
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// Whether a trace sink is set: without one the time of a record is never needed, so
    /// the request path skips reading the clock for it.
    pub fn tracing(&self) -> bool {
        self.trace.is_some()
    }

    /// No rule, no quiesce and no trace: [`FaultEngine::on_request`] would decide nothing
    /// and record nothing for a command, so the request path need not describe it (nor
    /// read the clock) and only counts it ([`FaultEngine::count_commands`]).
    pub fn is_idle(&self) -> bool {
        self.trace.is_none() && self.rules.is_empty() && self.quiesce.is_empty()
    }

    /// What `n` calls of [`FaultEngine::on_request`] do for commands that a
    /// [`CommandScreen`] passed (or for any command of an idle engine): count them. The
    /// request path counts a batch's and hands the count over at once.
    pub fn count_commands(&mut self, n: u64) {
        self.stats.commands += n;
    }

    /// Whether [`FaultEngine::on_request`] would read the time it is given for `req`: with
    /// a trace, a quiesce, or a rule that matches `req`. When it would not, the request
    /// path need not read the clock (any time given is ignored).
    pub fn needs_time(&self, req: &RequestInfo) -> bool {
        self.trace.is_some()
            || !self.quiesce.is_empty()
            || self
                .rules
                .iter()
                .any(|r| r.spec.enabled && !r.time_driven && r.spec.matcher.matches(req))
    }

    /// What `n` calls of [`FaultEngine::record_complete`] do when there is no trace: the
    /// request path counts the completions of a batch and hands the count over at once.
    pub fn count_completions(&mut self, n: u64) {
        self.stats.completions += n;
    }

    pub fn flush_trace(&mut self) -> Result<(), TraceError> {
        match &mut self.trace {
            Some(t) => t.flush(),
            None => Ok(()),
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// Change the seed; counters stay, later draws use the new seed.
    pub fn set_seed(&mut self, seed: u64) {
        self.seed = seed;
    }

    pub fn allow_corruption(&self) -> bool {
        self.allow_corruption
    }

    pub fn state(&self) -> u32 {
        self.state
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Add a fault; returns its id.
    pub fn add_fault(&mut self, spec: FaultSpec) -> Result<u32, EngineError> {
        if spec.action.kind() == FaultKind::Corrupt && !self.allow_corruption {
            return Err(EngineError::CorruptionNotAllowed);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.rules.push(Rule::new(id, spec));
        self.changed();
        Ok(id)
    }

    pub fn remove_fault(&mut self, id: u32) -> Result<(), EngineError> {
        let pos = self
            .rules
            .iter()
            .position(|r| r.id == id)
            .ok_or(EngineError::NoSuchFault(id))?;
        self.rules.remove(pos);
        self.changed();
        Ok(())
    }

    pub fn set_enabled(&mut self, id: u32, enabled: bool) -> Result<(), EngineError> {
        let rule = self
            .rules
            .iter_mut()
            .find(|r| r.id == id)
            .ok_or(EngineError::NoSuchFault(id))?;
        rule.spec.enabled = enabled;
        self.changed();
        Ok(())
    }

    pub fn faults(&self) -> impl Iterator<Item = FaultStatus<'_>> {
        self.rules.iter().map(|r| FaultStatus {
            id: r.id,
            seen: r.seen,
            fired: r.fired,
            spec: &r.spec,
        })
    }

    /// Queue an event to be posted at the next tick (control socket `fire-event`).
    pub fn queue_event(&mut self, event: VirtioEvent) {
        self.pending_events.push_back(event);
    }

    /// Decide what happens to a request that just arrived.
    pub fn on_request(&mut self, req: &RequestInfo, now: Duration) -> RequestDecision {
        let mut d = RequestDecision::default();
        match req.kind {
            RequestKind::Command => self.stats.commands += 1,
            RequestKind::Tmf(_) => self.stats.tmfs += 1,
            RequestKind::An => self.stats.an_requests += 1,
        }
        if self.trace.is_some() {
            self.trace_arrival(req, now);
        }
        if req.kind == RequestKind::Command && !self.quiesce.is_empty() {
            self.apply_quiesce(req, now, &mut d);
        }
        let mut new_state = None;
        for rule in &mut self.rules {
            if !rule.spec.enabled || rule.time_driven || !rule.spec.matcher.matches(req) {
                continue;
            }
            if !trigger_fires(
                &rule.spec.trigger,
                rule.id,
                &mut rule.seen,
                &mut rule.fired,
                self.state,
                self.seed,
                now,
            ) {
                continue;
            }
            // blkdebug: state changes take effect after the whole request was looked at.
            if let Some(s) = rule.spec.trigger.set_state {
                new_state = Some(s);
            }
            let seq = rule.fired;
            let mut delay_us = None;
            let mut detail: Option<Cow<'static, str>> = None;
            let applied = match rule.spec.action {
                FaultAction::DropInterrupt => {
                    let first = !d.drop_interrupt;
                    d.drop_interrupt = true;
                    first
                }
                FaultAction::Delay(dist) => {
                    let delay = sample_delay(dist, draw(self.seed, rule.id, seq, STREAM_DELAY));
                    d.delay = d.delay.saturating_add(delay);
                    delay_us = Some(micros(delay));
                    true
                }
                FaultAction::Lose => set_once(&mut d.completion, Completion::Lose),
                FaultAction::Status(s) => {
                    detail = Some(s.name().into());
                    set_once(&mut d.completion, Completion::Status(s))
                }
                FaultAction::Corrupt { bytes } => set_once(
                    &mut d.completion,
                    Completion::Corrupt(Corruption {
                        seed: draw(self.seed, rule.id, seq, STREAM_CORRUPT),
                        bytes,
                    }),
                ),
                FaultAction::SlowTmf {
                    duration,
                    new_commands,
                } => {
                    delay_us = Some(micros(duration));
                    detail = Some(policy_name(new_commands).into());
                    let applied = set_once(
                        &mut d.tmf,
                        TmfOutcome::Slow {
                            duration,
                            new_commands,
                        },
                    );
                    if applied {
                        if let RequestKind::Tmf(tmf) = req.kind {
                            // Commands must come to the engine from now on (they may get
                            // BUSY); announced before the TMF acts (see CommandScreen).
                            self.generation.fetch_add(1, Ordering::Release);
                            quiesce_for(
                                &mut self.quiesce,
                                rule.id,
                                tmf,
                                req,
                                now + duration,
                                new_commands,
                            );
                        }
                    }
                    applied
                }
                FaultAction::HangTmf => set_once(&mut d.tmf, TmfOutcome::Hang),
                FaultAction::FailTmf(f) => {
                    detail = Some(tmf_failure_name(f).into());
                    set_once(&mut d.tmf, TmfOutcome::Fail(f))
                }
                // Time-driven kinds were skipped above.
                FaultAction::SpuriousInterrupt { .. } | FaultAction::Event { .. } => false,
            };
            let kind = rule.spec.action.kind();
            if applied {
                *self.stats.fired.get_mut(kind) += 1;
            } else {
                self.stats.shadowed += 1;
            }
            emit(
                &mut self.trace,
                &mut self.stats,
                now,
                TraceEvent::Fault {
                    queue: Some(req.queue),
                    id: Some(req.id),
                    fault: rule.id,
                    name: rule.spec.name.as_deref().map(Cow::Borrowed),
                    kind: kind.name().into(),
                    detail,
                    delay_us,
                    shadowed: !applied,
                },
            );
        }
        if let Some(s) = new_state {
            self.state = s;
        }
        d
    }

    fn trace_arrival(&mut self, req: &RequestInfo, now: Duration) {
        let event = match req.kind {
            RequestKind::Tmf(tmf) => TraceEvent::TmfStart {
                queue: req.queue,
                id: req.id,
                tmf: tmf.name().into(),
                target: req.target,
                lun: req.lun,
            },
            RequestKind::Command | RequestKind::An => TraceEvent::Request {
                queue: req.queue,
                id: req.id,
                kind: if req.kind == RequestKind::An {
                    "an"
                } else {
                    "cmd"
                }
                .into(),
                target: req.target,
                lun: req.lun,
                op: req.opcode.and_then(opcode_name).map(Cow::Borrowed),
                opcode: req.opcode,
                lba: req.lba.map(|(s, _)| s),
                blocks: req.lba.map(|(_, n)| n),
                dir: req.direction.name().into(),
            },
        };
        emit(&mut self.trace, &mut self.stats, now, event);
    }

    /// Commands to a LU with a slow TMF in progress get BUSY or wait for it to end.
    fn apply_quiesce(&mut self, req: &RequestInfo, now: Duration, d: &mut RequestDecision) {
        self.quiesce.retain(|q| q.until > now);
        if self.quiesce.is_empty() {
            // The last one ended: commands may pass the screens again.
            self.changed();
        }
        let Some(q) = self
            .quiesce
            .iter()
            .find(|q| q.target == req.target && q.lun.is_none_or(|l| l == req.lun))
            .copied()
        else {
            return;
        };
        let mut delay_us = None;
        match q.policy {
            NewCommandPolicy::Busy => {
                d.completion = Completion::Status(StatusOverride::Busy);
                self.stats.busy_during_slow_tmf += 1;
            }
            NewCommandPolicy::Hold => {
                d.delay = q.until - now;
                delay_us = Some(micros(d.delay));
                self.stats.held_during_slow_tmf += 1;
            }
        }
        emit(
            &mut self.trace,
            &mut self.stats,
            now,
            TraceEvent::Fault {
                queue: Some(req.queue),
                id: Some(req.id),
                fault: q.fault,
                name: None,
                kind: FaultKind::SlowTmf.name().into(),
                detail: Some(policy_name(q.policy).into()),
                delay_us,
                shadowed: false,
            },
        );
    }

    /// Earliest time `on_tick` has something to do, if any.
    pub fn next_due(&self) -> Option<Duration> {
        if !self.pending_events.is_empty() {
            return Some(Duration::ZERO);
        }
        self.rules
            .iter()
            .filter(|r| r.spec.enabled)
            .filter_map(|r| r.next_due)
            .min()
    }

    /// Run the time-driven faults due at `now`. A late tick counts as one opportunity per
    /// fault, not one per period missed.
    pub fn on_tick(&mut self, now: Duration) -> Vec<TickAction> {
        let mut actions = Vec::new();
        while let Some(event) = self.pending_events.pop_front() {
            actions.push(TickAction::PostEvent(event));
            self.stats.fired.event += 1;
            emit(
                &mut self.trace,
                &mut self.stats,
                now,
                TraceEvent::Fault {
                    queue: None,
                    id: None,
                    fault: 0,
                    name: Some("control".into()),
                    kind: FaultKind::Event.name().into(),
                    detail: Some(event.name().into()),
                    delay_us: None,
                    shadowed: false,
                },
            );
        }
        let mut new_state = None;
        for rule in &mut self.rules {
            let (Some(due), Some(schedule)) = (rule.next_due, rule.spec.action.schedule()) else {
                continue;
            };
            if !rule.spec.enabled || now < due {
                continue;
            }
            rule.next_due = schedule.interval.map(|iv| {
                let periods = (now - due).as_nanos() / iv.as_nanos().max(1) + 1;
                let step = iv.as_nanos().saturating_mul(periods);
                due.saturating_add(Duration::from_nanos(
                    u64::try_from(step).unwrap_or(u64::MAX),
                ))
            });
            if !trigger_fires(
                &rule.spec.trigger,
                rule.id,
                &mut rule.seen,
                &mut rule.fired,
                self.state,
                self.seed,
                now,
            ) {
                continue;
            }
            if let Some(s) = rule.spec.trigger.set_state {
                new_state = Some(s);
            }
            let mut detail = None;
            match rule.spec.action {
                FaultAction::SpuriousInterrupt { queue, burst, .. } => {
                    actions.push(TickAction::SpuriousSignal {
                        queue,
                        count: burst,
                    });
                    self.stats.spurious_signals += u64::from(burst);
                    emit(
                        &mut self.trace,
                        &mut self.stats,
                        now,
                        TraceEvent::SpuriousSignal {
                            queue,
                            fault: rule.id,
                            count: burst,
                        },
                    );
                }
                FaultAction::Event { event, .. } => {
                    actions.push(TickAction::PostEvent(event));
                    detail = Some(event.name());
                }
                _ => continue,
            }
            *self.stats.fired.get_mut(rule.spec.action.kind()) += 1;
            emit(
                &mut self.trace,
                &mut self.stats,
                now,
                TraceEvent::Fault {
                    queue: None,
                    id: None,
                    fault: rule.id,
                    name: rule.spec.name.as_deref().map(Cow::Borrowed),
                    kind: rule.spec.action.kind().name().into(),
                    detail: detail.map(Cow::Borrowed),
                    delay_us: None,
                    shadowed: false,
                },
            );
        }
        if let Some(s) = new_state {
            self.state = s;
        }
        actions
    }

    /// A request went onto the used ring. `response` is the virtio response's name.
    pub fn record_complete(
        &mut self,
        queue: u16,
        id: u64,
        response: &str,
        status: Option<u8>,
        residual: Option<u32>,
        now: Duration,
    ) {
        self.stats.completions += 1;
        emit(
            &mut self.trace,
            &mut self.stats,
            now,
            TraceEvent::Complete {
                queue,
                id,
                response: response.into(),
                status,
                residual,
            },
        );
    }

    /// Whether the guest was signalled for a completion (`id`, when known).
    pub fn record_signal(
        &mut self,
        queue: u16,
        id: Option<u64>,
        outcome: SignalOutcome,
        now: Duration,
    ) {
        let event = match outcome {
            SignalOutcome::Sent => {
                self.stats.signals_sent += 1;
                TraceEvent::Signal { queue, id }
            }
            SignalOutcome::SuppressedByFault => {
                self.stats.signals_suppressed_fault += 1;
                TraceEvent::SignalSuppressed {
                    queue,
                    id,
                    reason: "fault".into(),
                }
            }
            SignalOutcome::SuppressedByEventIdx => {
                self.stats.signals_suppressed_event_idx += 1;
                TraceEvent::SignalSuppressed {
                    queue,
                    id,
                    reason: "event-idx".into(),
                }
            }
        };
        emit(&mut self.trace, &mut self.stats, now, event);
    }

    /// A TMF was answered (`response`: the virtio response's name).
    pub fn record_tmf_end(&mut self, queue: u16, id: u64, response: &str, now: Duration) {
        self.stats.tmfs_answered += 1;
        emit(
            &mut self.trace,
            &mut self.stats,
            now,
            TraceEvent::TmfEnd {
                queue,
                id,
                response: response.into(),
            },
        );
    }

    /// An event went onto the event queue.
    pub fn record_event_posted(&mut self, event: &VirtioEvent, now: Duration) {
        self.stats.events_posted += 1;
        let (target, lun) = event.address();
        let detail = event_detail(event);
        emit(
            &mut self.trace,
            &mut self.stats,
            now,
            TraceEvent::Event {
                event: event.name().into(),
                target,
                lun,
                detail,
            },
        );
    }

    /// An event could not be posted (`reason`: see the trace's `event-lost`).
    pub fn record_event_lost(&mut self, event: &VirtioEvent, reason: &'static str, now: Duration) {
        self.stats.events_lost += 1;
        let (target, lun) = event.address();
        emit(
            &mut self.trace,
            &mut self.stats,
            now,
            TraceEvent::EventLost {
                event: event.name().into(),
                target,
                lun,
                detail: event_detail(event),
                reason: reason.into(),
            },
        );
    }

    /// The device was reset: slow TMFs end (their LUs accept commands again).
    pub fn on_device_reset(&mut self, now: Duration) {
        self.stats.device_resets += 1;
        if !self.quiesce.is_empty() {
            self.quiesce.clear();
            self.changed();
        }
        emit(
            &mut self.trace,
            &mut self.stats,
            now,
            TraceEvent::DeviceReset {},
        );
    }
}

/// What one request queue's worker knows about the plan without taking the engine's lock:
/// whether [`FaultEngine::on_request`] could do anything for a command on that queue but
/// count it. Built under the lock ([`CommandScreen::refresh`]) and good for as long as the
/// engine's generation is the one it was built at ([`CommandScreen::is_current`], one
/// atomic load); the engine moves the generation on every change that matters here.
///
/// A command passes when there is no trace (which records every request), no slow TMF
/// quiesces an LU (which the engine checks before any rule), and no enabled request-driven
/// rule's matcher accepts it. Matching comes before every trigger (`state` and `window_ms`
/// included) in [`FaultEngine::on_request`], and a trigger only counts matches, so for such
/// a command the engine would decide nothing, advance no counter but `commands`, change no
/// state and read no time.
#[derive(Debug)]
pub struct CommandScreen {
    queue: u16,
    /// The generation of the engine it was last built from, shared with that engine.
    generation: Arc<AtomicU64>,
    built_at: u64,
    idle: bool,
    tracing: bool,
    /// A trace or a quiesce: every command goes to the engine.
    engine_needed: bool,
    /// The enabled request-driven rules that can match a command on `queue`.
    matchers: Vec<CommandMatcher>,
}

/// A command as a [`CommandScreen`] looks at it. What costs more to find out is asked for
/// only when a rule looks at it: its data direction and its blocks (first block and
/// count, for reads and writes).
pub trait CommandShape {
    fn target(&self) -> u8;
    fn lun(&self) -> u16;
    fn opcode(&self) -> u8;
    fn direction(&self) -> DataDirection;
    fn blocks(&self) -> Option<(u64, u64)>;
}

impl CommandShape for RequestInfo {
    fn target(&self) -> u8 {
        self.target
    }
    fn lun(&self) -> u16 {
        self.lun
    }
    fn opcode(&self) -> u8 {
        self.opcode.unwrap_or_default()
    }
    fn direction(&self) -> DataDirection {
        self.direction
    }
    fn blocks(&self) -> Option<(u64, u64)> {
        self.lba
    }
}

/// What is left of a [`Matcher`] for the commands of one queue, once its request class
/// and queue are known to accept them: [`Matcher::matches`] on such a command.
#[derive(Debug, Clone, Copy)]
struct CommandMatcher {
    target: Option<u8>,
    lun: Option<u16>,
    opcode: Option<u8>,
    direction: Option<DataDirection>,
    lba: Option<(u64, u64)>,
}

impl CommandMatcher {
    #[inline]
    fn matches(&self, c: &impl CommandShape) -> bool {
        if self.target.is_some_and(|t| t != c.target())
            || self.lun.is_some_and(|l| l != c.lun())
            || self.opcode.is_some_and(|o| o != c.opcode())
            || self.direction.is_some_and(|d| d != c.direction())
        {
            return false;
        }
        // As in `Matcher::matches`.
        let Some((lo, hi)) = self.lba else {
            return true;
        };
        match c.blocks() {
            None => false,
            Some((start, n)) => {
                let last = start.saturating_add(n.max(1) - 1);
                start <= hi && last >= lo
            }
        }
    }
}

impl CommandScreen {
    /// A screen of `engine` for the commands of `queue`.
    pub fn new(engine: &FaultEngine, queue: u16) -> CommandScreen {
        let mut screen = CommandScreen {
            queue,
            generation: engine.generation.clone(),
            built_at: 0,
            idle: false,
            tracing: false,
            engine_needed: true,
            matchers: Vec::new(),
        };
        screen.refresh(engine);
        screen
    }

    /// Whether the engine is unchanged since the screen was built. Acquire, and meant to
    /// be read after the command is marked executing (whose SeqCst fence orders the two):
    /// either this load sees the generation a slow TMF moved before acting, or that TMF's
    /// wait sees the command executing and waits for it.
    #[inline]
    pub fn is_current(&self) -> bool {
        self.generation.load(Ordering::Acquire) == self.built_at
    }

    /// Rebuilds the screen from `engine` (under its lock). Allocates only when the plan has
    /// more command rules than ever before.
    pub fn refresh(&mut self, engine: &FaultEngine) {
        if !Arc::ptr_eq(&self.generation, &engine.generation) {
            self.generation = engine.generation.clone();
        }
        // Under the lock: no change is between this load and what is read below.
        self.built_at = engine.generation.load(Ordering::Acquire);
        self.idle = engine.is_idle();
        self.tracing = engine.tracing();
        self.engine_needed = self.tracing || !engine.quiesce.is_empty();
        self.matchers.clear();
        let queue = self.queue;
        self.matchers.extend(
            engine
                .rules
                .iter()
                .filter(|r| r.spec.enabled && !r.time_driven)
                .map(|r| r.spec.matcher)
                .filter(|m| {
                    matches!(m.class, RequestClass::Any | RequestClass::Command)
                        && m.queue.matches(queue)
                })
                .map(|m| CommandMatcher {
                    target: m.target,
                    lun: m.lun,
                    opcode: m.opcode,
                    direction: m.direction,
                    lba: m.lba,
                }),
        );
    }

    /// [`FaultEngine::is_idle`] when the screen was built.
    pub fn idle(&self) -> bool {
        self.idle
    }

    /// [`FaultEngine::tracing`] when the screen was built.
    pub fn tracing(&self) -> bool {
        self.tracing
    }

    /// Whether [`FaultEngine::on_request`] would only count the command `c` on this
    /// screen's queue; then [`FaultEngine::count_commands`] stands in for it.
    #[inline]
    pub fn passes(&self, c: &impl CommandShape) -> bool {
        !self.engine_needed && !self.matchers.iter().any(|m| m.matches(c))
    }

    /// [`CommandScreen::passes`] for a request as the engine gets it (any request on any
    /// queue: only commands on this screen's queue can pass).
    pub fn passes_request(&self, req: &RequestInfo) -> bool {
        req.kind == RequestKind::Command
            && req.opcode.is_some()
            && req.queue == self.queue
            && self.passes(req)
    }
}

/// The trace's `detail` of an event: the reset reason, or asc/ascq.
fn event_detail(event: &VirtioEvent) -> Option<Cow<'static, str>> {
    match *event {
        VirtioEvent::TransportReset { reason, .. } => Some(Cow::Borrowed(reason.name())),
        VirtioEvent::ParamChange { asc, ascq, .. } => {
            Some(Cow::Owned(format!("{asc:#04x}/{ascq:#04x}")))
        }
        VirtioEvent::EventsMissed => None,
    }
}

/// Set an exclusive outcome unless an earlier fault already set it.
fn set_once<T: Default + PartialEq>(slot: &mut T, value: T) -> bool {
    if *slot == T::default() {
        *slot = value;
        true
    } else {
        false
    }
}

fn quiesce_for(
    quiesce: &mut Vec<Quiesce>,
    fault: u32,
    tmf: TmfKind,
    req: &RequestInfo,
    until: Duration,
    policy: NewCommandPolicy,
) {
    let lun = match tmf {
        TmfKind::ITNexusReset => None,
        TmfKind::AbortTask
        | TmfKind::AbortTaskSet
        | TmfKind::ClearTaskSet
        | TmfKind::LogicalUnitReset => Some(req.lun),
        // Queries and CLEAR ACA do not stop the LU.
        TmfKind::ClearAca | TmfKind::QueryTask | TmfKind::QueryTaskSet | TmfKind::Other(_) => {
            return
        }
    };
    quiesce.push(Quiesce {
        fault,
        target: req.target,
        lun,
        until,
        policy,
    });
}

fn policy_name(p: NewCommandPolicy) -> &'static str {
    match p {
        NewCommandPolicy::Busy => "busy",
        NewCommandPolicy::Hold => "hold",
    }
}

fn tmf_failure_name(f: TmfFailure) -> &'static str {
    match f {
        TmfFailure::FunctionRejected => "function-rejected",
        TmfFailure::Failure => "failure",
    }
}
