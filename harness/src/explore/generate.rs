//! Random cases from the whole plan grammar (docs/fault-plan.md): every kind, every
//! matcher (queue, request class, target/LUN, opcode, LBA range, direction, TMF), every
//! trigger (always, every N, probability, after N, at most N times, once, a time window,
//! states), 1 to 4 faults, and guest arguments inside the ranges the miniport supports.
//! Case `i` of seed `s` depends on nothing else, so a campaign, a shard of it and a rerun
//! all draw the same plans. Values stay small, so that a run takes a fraction of a second.

use guest_miniport::contract::{splitmix64, GuestArgs, PlantedBug, ResetKind, Workload};

use super::case::{Case, FaultTable, Value};
use super::oracle::Allowance;

/// Blocks of the harness's disk image (64 MiB of 512-byte blocks).
const DISK_BLOCKS: u64 = 64 * 1024 * 1024 / 512;
/// The guest's deadline is at least this, and at most [`MAX_DEADLINE_MS`].
const MIN_DEADLINE_MS: u64 = 1500;
pub const MAX_DEADLINE_MS: u64 = 2500;

/// A small seeded generator (SplitMix64).
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn draw(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        splitmix64(self.0)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.draw() % (hi - lo + 1)
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.draw() % 100 < percent
    }

    pub fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[(self.draw() % items.len() as u64) as usize].clone()
    }

    /// An item by weight.
    pub fn weighted<T: Clone>(&mut self, items: &[(u64, T)]) -> T {
        let total: u64 = items.iter().map(|(w, _)| w).sum();
        let mut at = self.draw() % total;
        for (w, item) in items {
            if at < *w {
                return item.clone();
            }
            at -= w;
        }
        items[items.len() - 1].1.clone()
    }

    /// A probability in steps of 0.05 between 0.05 and `max` (written as 0.3, not
    /// 0.30000000000000004).
    fn probability(&mut self, max: f64) -> f64 {
        let steps = (max * 20.0).round() as u64;
        self.range(1, steps) as f64 / 20.0
    }
}

/// What a campaign generates.
#[derive(Clone, Copy, Debug)]
pub struct GenOptions {
    pub seed: u64,
    pub bug: PlantedBug,
    /// Plans may corrupt data (`corrupt` faults, `allow_corruption = true`).
    pub allow_corruption: bool,
}

/// Case `index` of the campaign.
pub fn generate(opts: &GenOptions, index: u64) -> Case {
    let mut rng = Rng::new(splitmix64(opts.seed ^ splitmix64(index.wrapping_add(1))));
    let guest = guest_args(&mut rng, opts.bug);
    let n = rng.weighted(&[(35, 1), (35, 2), (20, 3), (10, 4)]);
    let mut faults: Vec<FaultTable> = (0..n)
        .map(|_| fault(&mut rng, opts.allow_corruption))
        .collect();
    if n >= 2 && rng.chance(8) {
        // A sequence: the first fault moves the plan to state 2, the last acts in it.
        faults[0].set("set_state", Value::Int(2));
        faults[n - 1].set("state", Value::Int(2));
    }
    let mut case = Case {
        faults,
        guest,
        seed: rng.draw() % 1_000_000,
        allow_corruption: opts.allow_corruption,
    };
    case.guest.deadline_ms = deadline_for(&case);
    case
}

/// A deadline the plan's worst case fits in twice over, within bounds; the oracle
/// tolerates a timeout only when it does not ([`Allowance::timeouts`]).
pub fn deadline_for(case: &Case) -> u32 {
    let budget = case
        .plan()
        .map_or(0, |plan| Allowance::time_budget_ms(&plan, &case.guest));
    (budget.saturating_mul(2).saturating_add(1000)).clamp(MIN_DEADLINE_MS, MAX_DEADLINE_MS) as u32
}

fn guest_args(rng: &mut Rng, bug: PlantedBug) -> GuestArgs {
    let workload = rng.weighted(&[
        (50, Workload::Io),
        (25, Workload::ResetUnderLoad),
        (12, Workload::Smoke),
        (13, Workload::Bench),
    ]);
    let blocks = match workload {
        Workload::Bench => rng.range(32, 128) as u32,
        _ => rng.range(8, 48) as u32,
    };
    let tick_us = rng.pick(&[1000u32, 2000]);
    let tmf_timeout_ms = rng.range(30, 150) as u32;
    GuestArgs {
        workload,
        irq: rng.chance(80),
        // poll=off is the negative controls' mode: a mechanism off, not a setting.
        poll: true,
        seed: rng.draw() % 100_000,
        blocks,
        queue_depth: rng.pick(&[1u32, 2, 4, 8, 16]),
        tick_us,
        watchdog_us: tick_us * rng.pick(&[1u32, 2, 4]),
        srb_timeout_ms: rng.range(150, 400) as u32,
        tmf_timeout_ms,
        // The reset hold outlasts the TMF bound, so a device reset ends every reset
        // before its hold does (P2).
        hold_ms: tmf_timeout_ms + rng.range(30, 150) as u32,
        reset: if rng.chance(70) {
            ResetKind::Lu
        } else {
            ResetKind::Nexus
        },
        reset_after: rng.range(1, u64::from(blocks / 2).max(1)) as u32,
        retries: rng.range(1, 4) as u32,
        deadline_ms: MIN_DEADLINE_MS as u32,
        // One CPU with the image's routing, unless the campaign's `--guest cpus=N`.
        cpus: 1,
        irq_cpu: GuestArgs::default().irq_cpu,
        timer_cpu: GuestArgs::default().timer_cpu,
        // Completion in HwInterrupt, unless the campaign's `--guest deferred=on`: drawing
        // it would change every plan a seed gave before.
        deferred: false,
        bug,
    }
}

/// Faults that act on commands: what their matcher may name.
const COMMAND_OPCODES: [(u64, &str); 6] = [
    (30, "write-10"),
    (30, "read-10"),
    (10, "inquiry"),
    (10, "read-capacity-10"),
    (10, "report-luns"),
    (10, "test-unit-ready"),
];

fn fault(rng: &mut Rng, allow_corruption: bool) -> FaultTable {
    let mut kinds = vec![
        (14, "drop-interrupt"),
        (12, "delay"),
        (8, "lose"),
        (7, "slow-tmf"),
        (5, "hang-tmf"),
        (5, "fail-tmf"),
        (7, "spurious-interrupt"),
        (30, "status"),
        (7, "event"),
    ];
    if allow_corruption {
        kinds.push((8, "corrupt"));
    }
    let kind = rng.weighted(&kinds);
    let mut f = FaultTable::new(kind);
    match kind {
        "drop-interrupt" | "delay" => request_matcher(rng, &mut f),
        "lose" | "status" | "corrupt" => command_matcher(rng, &mut f),
        "slow-tmf" | "hang-tmf" | "fail-tmf" => tmf_matcher(rng, &mut f),
        _ => {}
    }
    parameters(rng, &mut f);
    trigger(rng, &mut f);
    if costly(&f) && f.get("times").is_none() && f.get("once").is_none() && rng.chance(60) {
        // Mostly a few times only: every firing of these costs the run a timeout, a
        // reset or a pause, and a run should take a fraction of a second.
        f.set("times", Value::Int(rng.range(1, 3)));
    }
    f
}

/// Whether each firing of `f` costs the run time: a lost command, a TMF not answered
/// at once, a delay, BUSY (and kin), a reset completion, a transport reset's hold.
fn costly(f: &FaultTable) -> bool {
    match f.kind {
        "lose" | "hang-tmf" | "fail-tmf" | "slow-tmf" | "delay" => true,
        "status" => matches!(
            f.get("status"),
            Some(Value::Str(s)) if ["busy", "task-set-full", "virtio-busy", "reset"].contains(&s.as_str())
        ),
        "event" => f.get("event") == Some(&Value::str("transport-reset")),
        _ => false,
    }
}

/// `queue`, `target` and `lun`, each now and then.
fn address(rng: &mut Rng, f: &mut FaultTable, queues: &[Value]) {
    if rng.chance(30) {
        f.set("queue", rng.pick(queues));
    }
    if rng.chance(8) {
        f.set("target", Value::Int(rng.pick(&[0, 0, 1])));
    }
    if rng.chance(8) {
        f.set("lun", Value::Int(rng.pick(&[0, 0, 1])));
    }
}

fn command_matcher(rng: &mut Rng, f: &mut FaultTable) {
    let queues = [Value::str("request"), Value::str("any"), Value::Int(2)];
    address(rng, f, &queues);
    if rng.chance(40) {
        f.set("opcode", Value::str(rng.weighted(&COMMAND_OPCODES)));
    } else if rng.chance(30) {
        f.set(
            "direction",
            Value::str(rng.pick(&["read", "write", "write", "none"])),
        );
    }
    if rng.chance(20) {
        let first = rng.range(0, DISK_BLOCKS - 1);
        let last = (first + rng.range(0, DISK_BLOCKS / 2)).min(DISK_BLOCKS - 1);
        f.set("lba", Value::Pair(first, last));
    }
}

fn tmf_matcher(rng: &mut Rng, f: &mut FaultTable) {
    let queues = [Value::str("control"), Value::str("any"), Value::Int(0)];
    address(rng, f, &queues);
    if rng.chance(60) {
        let tmf = rng.weighted(&[
            (45, "lu-reset"),
            (40, "i-t-nexus-reset"),
            (5, "abort-task"),
            (5, "abort-task-set"),
            (5, "query-task"),
        ]);
        f.set("tmf", Value::str(tmf));
    }
}

/// `drop-interrupt` and `delay` look at any request: commands, TMFs or AN requests.
fn request_matcher(rng: &mut Rng, f: &mut FaultTable) {
    match rng.weighted(&[(55, "command"), (15, "tmf"), (5, "an"), (25, "unset")]) {
        "command" => {
            if rng.chance(50) {
                f.set("request", Value::str("command"));
            }
            command_matcher(rng, f)
        }
        "tmf" => {
            f.set("request", Value::str("tmf"));
            tmf_matcher(rng, f)
        }
        "an" => f.set("request", Value::str("an")),
        _ => {
            let queues = [
                Value::str("request"),
                Value::str("control"),
                Value::str("event"),
                Value::str("any"),
                Value::Int(2),
            ];
            address(rng, f, &queues)
        }
    }
}

fn parameters(rng: &mut Rng, f: &mut FaultTable) {
    match f.kind {
        "delay" => delay(rng, f),
        "slow-tmf" => {
            f.set("duration_ms", Value::Int(rng.range(10, 200)));
            if rng.chance(50) {
                f.set("new_commands", Value::str(rng.pick(&["busy", "hold"])));
            }
        }
        "fail-tmf" if rng.chance(50) => {
            f.set("response", Value::str(rng.pick(&["rejected", "failed"])))
        }
        "spurious-interrupt" => {
            if rng.chance(60) {
                let queues = [
                    Value::str("request"),
                    Value::str("control"),
                    Value::str("event"),
                    Value::Int(2),
                ];
                f.set("queue", rng.pick(&queues));
            }
            schedule(rng, f, 5, 50);
            if rng.chance(60) {
                f.set("burst", Value::Int(rng.range(1, 10)));
            }
        }
        "status" => status(rng, f),
        "event" => event(rng, f),
        "corrupt" if rng.chance(50) => f.set("bytes", Value::Int(rng.range(1, 4))),
        _ => {}
    }
}

fn delay(rng: &mut Rng, f: &mut FaultTable) {
    match rng.weighted(&[(60, "fixed"), (25, "uniform"), (15, "long-tail")]) {
        "fixed" => f.set("delay_ms", Value::Int(rng.pick(&[0, 1, 2, 5, 10, 20]))),
        "uniform" => {
            let min = rng.range(0, 10);
            f.set("distribution", Value::str("uniform"));
            f.set("min_ms", Value::Int(min));
            f.set("max_ms", Value::Int(min + rng.range(1, 30)));
        }
        _ => {
            f.set("distribution", Value::str("long-tail"));
            f.set("min_ms", Value::Int(rng.range(1, 5)));
            f.set("max_ms", Value::Int(rng.range(20, 60)));
            if rng.chance(50) {
                f.set("alpha", Value::Float(rng.pick(&[1.2, 1.5, 2.0, 2.5])));
            }
        }
    }
}

/// `interval_ms` and/or `at_ms` of a time-driven fault.
fn schedule(rng: &mut Rng, f: &mut FaultTable, min_interval: u64, max_interval: u64) {
    let both = rng.chance(30);
    if both || rng.chance(60) {
        f.set(
            "interval_ms",
            Value::Int(rng.range(min_interval, max_interval)),
        );
    }
    if both || f.get("interval_ms").is_none() {
        f.set("at_ms", Value::Int(rng.range(0, 400)));
    }
}

fn status(rng: &mut Rng, f: &mut FaultTable) {
    let status = rng.weighted(&[
        (20, "check-condition"),
        (10, "busy"),
        (8, "task-set-full"),
        (4, "reservation-conflict"),
        (4, "overrun"),
        (4, "aborted"),
        (4, "bad-target"),
        (8, "reset"),
        (8, "virtio-busy"),
        (4, "transport-failure"),
        (4, "target-failure"),
        (4, "nexus-failure"),
        (4, "failure"),
        (8, "short-transfer"),
    ]);
    f.set("status", Value::str(status));
    match status {
        "check-condition" => {
            let key = rng.weighted(&[(35, 6u64), (30, 3), (10, 4), (10, 0xb), (5, 2), (10, 5)]);
            f.set("sense_key", Value::Int(key));
            if rng.chance(60) {
                f.set("asc", Value::Int(rng.pick(&[0x11, 0x29, 0x2a, 0x3f, 0x44])));
            }
            if rng.chance(20) {
                f.set("ascq", Value::Int(rng.range(0, 9)));
            }
        }
        "short-transfer" => f.set("residual", Value::Int(rng.pick(&[1, 8, 256, 512]))),
        _ => {}
    }
}

fn event(rng: &mut Rng, f: &mut FaultTable) {
    let event = rng.weighted(&[
        (50, "transport-reset"),
        (30, "param-change"),
        (20, "events-missed"),
    ]);
    f.set("event", Value::str(event));
    match event {
        "transport-reset" if rng.chance(60) => f.set(
            "reason",
            Value::str(rng.pick(&["rescan", "removed", "hard"])),
        ),
        "param-change" if rng.chance(30) => {
            f.set("asc", Value::Int(0x2a));
            f.set("ascq", Value::Int(rng.pick(&[0x01, 0x09])));
        }
        _ => {}
    }
    if event != "events-missed" && rng.chance(10) {
        f.set("target", Value::Int(rng.pick(&[0, 1])));
        f.set("lun", Value::Int(rng.pick(&[0, 1])));
    }
    schedule(rng, f, 20, 200);
}

/// When the fault fires: always, every N, with a probability, once, at most N times,
/// after N, in a window; some of them combined.
fn trigger(rng: &mut Rng, f: &mut FaultTable) {
    // A lossy interrupt line loses some signals: dropping every one of them is polling,
    // and dropping one rarely hits a signal that EVENT_IDX would have sent.
    let lossy = f.kind == "drop-interrupt";
    let always = if lossy { 10 } else { 22 };
    match rng.weighted(&[
        (always, "always"),
        (20, "every"),
        (20, "probability"),
        (13, "once"),
        (13, "times"),
        (12, "after"),
    ]) {
        "every" => f.set("every", Value::Int(rng.range(2, 8))),
        "probability" => {
            let max = if lossy { 0.8 } else { 0.5 };
            f.set("probability", Value::Float(rng.probability(max)))
        }
        "once" => f.set("once", Value::Bool(true)),
        "times" => f.set("times", Value::Int(rng.range(1, 5))),
        "after" => {
            f.set("after", Value::Int(rng.range(1, 30)));
            if rng.chance(50) {
                f.set("times", Value::Int(rng.range(1, 5)));
            }
        }
        _ => {}
    }
    if rng.chance(6) {
        let start = rng.range(50, 400);
        f.set("window_ms", Value::Pair(start, start + rng.range(20, 300)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flakyhba_backend::faults::FaultKind;
    use std::collections::BTreeSet;

    fn opts(allow_corruption: bool) -> GenOptions {
        GenOptions {
            seed: 1,
            bug: PlantedBug::None,
            allow_corruption,
        }
    }

    #[test]
    fn every_generated_plan_is_valid_and_in_range() {
        for i in 0..3000 {
            let c = generate(&opts(i % 2 == 0), i);
            let plan = c
                .plan()
                .unwrap_or_else(|e| panic!("case {i}: {e}\n{}", c.plan_text()));
            assert!((1..=4).contains(&plan.faults.len()), "case {i}");
            let parsed = GuestArgs::parse(&c.guest.to_string()).unwrap();
            assert_eq!(parsed, c.guest, "case {i}");
            assert!(c.guest.poll && c.guest.tmf_timeout_ms < c.guest.hold_ms);
            for f in &c.faults {
                if let Some(Value::Float(p)) = f.get("probability") {
                    assert_eq!(
                        format!("{p}").len(),
                        format!("{p:.2}").trim_end_matches('0').len(),
                        "{p}"
                    );
                }
            }
            let d = u64::from(c.guest.deadline_ms);
            assert!((MIN_DEADLINE_MS..=MAX_DEADLINE_MS).contains(&d), "case {i}");
        }
    }

    #[test]
    fn the_whole_grammar_is_drawn() {
        let mut kinds = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for i in 0..3000 {
            let c = generate(&opts(true), i);
            for f in &c.faults {
                kinds.insert(f.kind);
                keys.extend(f.keys.iter().map(|(k, _)| *k));
            }
        }
        for k in FaultKind::ALL {
            assert!(kinds.contains(k.name()), "kind {k} never drawn");
        }
        for key in [
            "queue",
            "request",
            "target",
            "lun",
            "opcode",
            "lba",
            "direction",
            "tmf",
            "every",
            "after",
            "times",
            "once",
            "probability",
            "window_ms",
            "state",
            "set_state",
            "interval_ms",
            "at_ms",
            "burst",
            "duration_ms",
            "new_commands",
            "response",
            "distribution",
            "alpha",
            "sense_key",
            "residual",
            "event",
            "reason",
            "bytes",
        ] {
            assert!(keys.contains(key), "key {key} never drawn");
        }
    }

    #[test]
    fn corruption_only_when_asked_for() {
        for i in 0..2000 {
            let c = generate(&opts(false), i);
            assert!(!c.allow_corruption);
            assert!(c.faults.iter().all(|f| f.kind != "corrupt"), "case {i}");
        }
    }

    #[test]
    fn the_same_seed_and_index_give_the_same_case() {
        let o = opts(false);
        assert_eq!(generate(&o, 17), generate(&o, 17));
        assert_ne!(generate(&o, 17), generate(&o, 18));
        let other = GenOptions { seed: 2, ..o };
        assert_ne!(generate(&o, 17), generate(&other, 17));
        let bugged = GenOptions {
            bug: PlantedBug::TmfSpin,
            ..o
        };
        let (a, b) = (generate(&o, 5), generate(&bugged, 5));
        assert_eq!(a.faults, b.faults, "the bug does not change the plan");
        assert_eq!(b.guest.bug, PlantedBug::TmfSpin);
    }
}
