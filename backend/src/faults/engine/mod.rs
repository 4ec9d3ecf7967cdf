//! The fault engine: deterministic decisions for each request and each clock tick.
//!
//! Randomness is counter based: every draw is `mix(seed, fault id, opportunity number,
//! stream)`, so a fault's decisions depend only on the seed and the order of the requests
//! it matches, never on other faults or on threads.
//!
//! `request` says what a request is and which faults match it, `decision` what the
//! engine decides, `trigger` and `draw` when a fault fires and how much, `tick` what
//! the clock drives, `record` what the request path reports back (counters and trace),
//! and `screen` what a worker knows without the engine's lock.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::plan::bounds::MAX_FAULTS;
use super::plan::{
    opcode_name, FaultAction, FaultKind, FaultSpec, NewCommandPolicy, Plan, StatusOverride,
    TmfFailure, TmfKind, VirtioEvent,
};
use super::trace::{Trace, TraceError, TraceEvent};

mod decision;
mod draw;
mod record;
mod request;
mod screen;
mod stats;
mod tick;
mod trigger;

#[cfg(test)]
mod tests;

pub use decision::{
    Completion, Corruption, RequestDecision, SignalOutcome, TickAction, TmfOutcome,
};
use draw::{draw, micros, sample_delay, STREAM_CORRUPT, STREAM_DELAY};
use record::emit;
pub use request::{RequestInfo, RequestKind};
pub use screen::{CommandScreen, CommandShape};
pub use stats::{KindCounts, Stats};
use trigger::trigger_fires;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EngineError {
    #[error("no fault with id {0}")]
    NoSuchFault(u32),
    #[error("fault kind `corrupt` needs `allow_corruption = true` in the plan")]
    CorruptionNotAllowed,
    #[error("the plan holds {MAX_FAULTS} faults, the most it may: remove one first")]
    TooManyFaults,
    #[error("{MAX_PENDING_EVENTS} events wait for the driver already (is a frontend connected?)")]
    TooManyEvents,
}

/// Events `fire-event` may queue before the driver takes them.
pub const MAX_PENDING_EVENTS: usize = 256;

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

    /// Evaluates the trigger for one opportunity (a match, or a scheduled moment),
    /// counting it and, if it fires, the firing.
    fn fires(&mut self, state: u32, seed: u64, now: Duration) -> bool {
        let (seen, fired) = (&mut self.seen, &mut self.fired);
        trigger_fires(&self.spec.trigger, self.id, seen, fired, state, seed, now)
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

/// What one fired rule did to a request's decision, for its counter and its trace record.
#[derive(Debug, Default)]
struct Effect {
    /// False: an earlier fault had already decided what this one would (shadowed).
    applied: bool,
    delay_us: Option<u64>,
    detail: Option<Cow<'static, str>>,
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
        // Ids are never reused: the last one ends the adding too.
        if self.rules.len() >= MAX_FAULTS || self.next_id == u32::MAX {
            return Err(EngineError::TooManyFaults);
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
    pub fn queue_event(&mut self, event: VirtioEvent) -> Result<(), EngineError> {
        if self.pending_events.len() >= MAX_PENDING_EVENTS {
            return Err(EngineError::TooManyEvents);
        }
        self.pending_events.push_back(event);
        Ok(())
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
        for index in 0..self.rules.len() {
            let rule = &mut self.rules[index];
            if !rule.spec.enabled || rule.time_driven || !rule.spec.matcher.matches(req) {
                continue;
            }
            if !rule.fires(self.state, self.seed, now) {
                continue;
            }
            // blkdebug: state changes take effect after the whole request was looked at.
            if let Some(s) = rule.spec.trigger.set_state {
                new_state = Some(s);
            }
            let effect = self.apply_rule(index, req, now, &mut d);
            self.record_fault(index, req, now, effect);
        }
        if let Some(s) = new_state {
            self.state = s;
        }
        d
    }

    /// Applies the action of rule `index`, which fired for `req`, to the decision `d`.
    fn apply_rule(
        &mut self,
        index: usize,
        req: &RequestInfo,
        now: Duration,
        d: &mut RequestDecision,
    ) -> Effect {
        let rule = &self.rules[index];
        let (id, seq) = (rule.id, rule.fired);
        let mut effect = Effect::default();
        effect.applied = match rule.spec.action {
            FaultAction::DropInterrupt => {
                let first = !d.drop_interrupt;
                d.drop_interrupt = true;
                first
            }
            FaultAction::Delay(dist) => {
                let delay = sample_delay(dist, draw(self.seed, id, seq, STREAM_DELAY));
                d.delay = d.delay.saturating_add(delay);
                effect.delay_us = Some(micros(delay));
                true
            }
            FaultAction::Lose => set_once(&mut d.completion, Completion::Lose),
            FaultAction::Status(s) => {
                effect.detail = Some(s.name().into());
                set_once(&mut d.completion, Completion::Status(s))
            }
            FaultAction::Corrupt { bytes } => set_once(
                &mut d.completion,
                Completion::Corrupt(Corruption {
                    seed: draw(self.seed, id, seq, STREAM_CORRUPT),
                    bytes,
                }),
            ),
            FaultAction::SlowTmf {
                duration,
                new_commands,
            } => {
                effect.delay_us = Some(micros(duration));
                effect.detail = Some(policy_name(new_commands).into());
                let slow = TmfOutcome::Slow {
                    duration,
                    new_commands,
                };
                let applied = set_once(&mut d.tmf, slow);
                if applied {
                    if let RequestKind::Tmf(tmf) = req.kind {
                        // Commands must come to the engine from now on (they may get
                        // BUSY); announced before the TMF acts (see CommandScreen).
                        self.generation.fetch_add(1, Ordering::Release);
                        let until = now + duration;
                        quiesce_for(&mut self.quiesce, id, tmf, req, until, new_commands);
                    }
                }
                applied
            }
            FaultAction::HangTmf => set_once(&mut d.tmf, TmfOutcome::Hang),
            FaultAction::FailTmf(f) => {
                effect.detail = Some(tmf_failure_name(f).into());
                set_once(&mut d.tmf, TmfOutcome::Fail(f))
            }
            // Time-driven kinds were skipped above.
            FaultAction::SpuriousInterrupt { .. } | FaultAction::Event { .. } => false,
        };
        effect
    }

    /// Counts and traces what rule `index` did for `req` (or that an earlier fault had
    /// already decided it: shadowed).
    fn record_fault(&mut self, index: usize, req: &RequestInfo, now: Duration, effect: Effect) {
        let rule = &self.rules[index];
        let kind = rule.spec.action.kind();
        if effect.applied {
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
                detail: effect.detail,
                delay_us: effect.delay_us,
                shadowed: !effect.applied,
            },
        );
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
