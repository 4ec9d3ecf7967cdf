//! Shrinking a failing case: remove faults one at a time; turn probabilities into fixed
//! triggers, `every N` into `once`, windows and delays shorter; lower the queue depth,
//! the block count and the run's length. A step is kept only when the smaller case
//! still breaks the same oracle clause on every one of `reruns` runs; after a kept step
//! the candidates are tried again from the first, until none is kept.

use guest_miniport::contract::Workload;

use super::case::{Case, FaultTable, Value};
use super::generate::deadline_for;
use super::oracle::{Clause, Verdict};

/// Most runs one shrink may make, so a flaky finding cannot keep it going for ever.
pub const MAX_SHRINK_RUNS: usize = 400;

/// One step tried: what it changes, and whether it was kept.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub change: String,
    pub kept: bool,
    /// Runs that broke the clause, of those made (a rejected step stops at the first
    /// that does not).
    pub matched: usize,
    pub runs: usize,
}

/// The result: the smallest case reached and every step tried.
#[derive(Clone, Debug)]
pub struct Shrunk {
    pub case: Case,
    pub steps: Vec<Step>,
    pub runs: usize,
}

/// Every case one step smaller than `case`, each with what it changes, in the order
/// they are tried: whole faults first, then triggers and parameters, then the guest.
pub fn candidates(case: &Case) -> Vec<(String, Case)> {
    let mut out = Vec::new();
    for i in 0..case.faults.len() {
        let mut c = case.clone();
        let f = c.faults.remove(i);
        out.push((format!("remove fault #{} ({})", i + 1, f.kind), c));
    }
    for i in 0..case.faults.len() {
        for (change, f) in fault_steps(&case.faults[i]) {
            let mut c = case.clone();
            c.faults[i] = f;
            out.push((format!("fault #{}: {change}", i + 1), c));
        }
    }
    out.extend(guest_steps(case));
    for (_, c) in &mut out {
        c.guest.deadline_ms = deadline_for(c);
    }
    out
}

/// A copy of `f` with `edit` applied, named.
fn edited(
    f: &FaultTable,
    change: String,
    edit: impl FnOnce(&mut FaultTable),
) -> (String, FaultTable) {
    let mut g = f.clone();
    edit(&mut g);
    (change, g)
}

/// Halves an integer key down to `min`, when it is above it; a key that reaches 0 is
/// removed (`after = 0` says nothing).
fn halve(f: &FaultTable, key: &'static str, min: u64, out: &mut Vec<(String, FaultTable)>) {
    if let Some(v) = f.get(key).and_then(Value::as_int).filter(|&v| v > min) {
        let to = (v / 2).max(min);
        if to == 0 {
            out.push(edited(f, format!("{key} {v} -> none"), |g| {
                g.remove(key);
            }));
        } else {
            out.push(edited(f, format!("{key} {v} -> {to}"), |g| {
                g.set(key, Value::Int(to))
            }));
        }
    }
}

fn fault_steps(f: &FaultTable) -> Vec<(String, FaultTable)> {
    let mut out = Vec::new();
    if let Some(Value::Float(p)) = f.get("probability") {
        let p = *p;
        out.push(edited(f, format!("probability {p} -> once"), |g| {
            g.remove("probability");
            g.remove("times");
            g.set("once", Value::Bool(true));
        }));
        out.push(edited(f, format!("probability {p} -> always"), |g| {
            g.remove("probability");
        }));
    }
    if let Some(n) = f.get("every").and_then(Value::as_int) {
        out.push(edited(f, format!("every {n} -> once"), |g| {
            g.remove("every");
            g.remove("times");
            g.set("once", Value::Bool(true));
        }));
    }
    if let Some(n) = f.get("times").and_then(Value::as_int).filter(|&n| n > 1) {
        out.push(edited(f, format!("times {n} -> once"), |g| {
            g.remove("times");
            g.set("once", Value::Bool(true));
        }));
    }
    if f.get("state").is_some() || f.get("set_state").is_some() {
        out.push(edited(f, "no states".into(), |g| {
            g.remove("state");
            g.remove("set_state");
        }));
    }
    if let Some(Value::Pair(a, b)) = f.get("window_ms") {
        let (a, b) = (*a, *b);
        if b - a > 10 {
            let to = a + (b - a) / 2;
            out.push(edited(
                f,
                format!("window [{a}, {b}] -> [{a}, {to}]"),
                |g| g.set("window_ms", Value::Pair(a, to)),
            ));
        }
    }
    halve(f, "after", 0, &mut out);
    for key in ["delay_ms", "max_ms", "duration_ms", "burst", "residual"] {
        halve(f, key, 1, &mut out);
    }
    if f.get("interval_ms").is_some() && f.get("at_ms").is_some() {
        out.push(edited(f, "interval -> once at at_ms".into(), |g| {
            g.remove("interval_ms");
        }));
    }
    out
}

fn guest_steps(case: &Case) -> Vec<(String, Case)> {
    let mut out = Vec::new();
    let g = case.guest;
    let mut step = |change: String, edit: &dyn Fn(&mut Case)| {
        let mut c = case.clone();
        edit(&mut c);
        out.push((change, c));
    };
    if g.workload == Workload::ResetUnderLoad {
        step("workload reset-under-load -> io".into(), &|c| {
            c.guest.workload = Workload::Io
        });
    }
    if g.queue_depth > 1 {
        let to = g.queue_depth / 2;
        step(format!("qd {} -> {to}", g.queue_depth), &|c| {
            c.guest.queue_depth = to
        });
    }
    let min_blocks = 4;
    if g.blocks > min_blocks {
        let to = (g.blocks / 2).max(min_blocks);
        step(format!("blocks {} -> {to}", g.blocks), &|c| {
            c.guest.blocks = to;
            c.guest.reset_after = c.guest.reset_after.min(to / 2);
        });
    }
    out
}

/// Shrinks `case`, which broke `clause`: `run(case, n)` runs a case up to `n` times and
/// judges each run (it may stop at the first that breaks another clause); `log` is told
/// each step as it is decided.
pub fn shrink(
    case: &Case,
    clause: Clause,
    reruns: usize,
    run: &mut dyn FnMut(&Case, usize) -> Vec<Verdict>,
    log: &mut dyn FnMut(&Step),
) -> Shrunk {
    let mut best = case.clone();
    let mut steps = Vec::new();
    let mut total = 0;
    'outer: loop {
        for (change, candidate) in candidates(&best) {
            if total + reruns > MAX_SHRINK_RUNS {
                break 'outer;
            }
            let verdicts = run(&candidate, reruns);
            total += verdicts.len();
            let matched = verdicts
                .iter()
                .filter(|v| v.clause() == Some(clause))
                .count();
            let step = Step {
                change,
                kept: matched == reruns,
                matched,
                runs: verdicts.len(),
            };
            log(&step);
            let kept = step.kept;
            steps.push(step);
            if kept {
                best = candidate;
                continue 'outer;
            }
        }
        break;
    }
    Shrunk {
        case: best,
        steps,
        runs: total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explore::oracle::Finding;
    use guest_miniport::contract::GuestArgs;

    fn fault(kind: &'static str, keys: &[(&'static str, Value)]) -> FaultTable {
        let mut f = FaultTable::new(kind);
        for (k, v) in keys {
            f.set(k, v.clone());
        }
        f
    }

    fn case() -> Case {
        Case {
            faults: vec![
                fault("drop-interrupt", &[("probability", Value::Float(0.3))]),
                fault(
                    "status",
                    &[
                        ("status", Value::str("virtio-busy")),
                        ("every", Value::Int(4)),
                    ],
                ),
                fault(
                    "delay",
                    &[("delay_ms", Value::Int(20)), ("after", Value::Int(1))],
                ),
            ],
            guest: GuestArgs {
                workload: Workload::ResetUnderLoad,
                queue_depth: 8,
                blocks: 64,
                reset_after: 16,
                ..GuestArgs::default()
            },
            seed: 3,
            allow_corruption: false,
        }
    }

    fn found() -> Verdict {
        Verdict::Found(Finding {
            clause: Clause::Failure,
            key: String::new(),
            detail: String::new(),
        })
    }

    #[test]
    fn every_candidate_is_a_valid_smaller_plan() {
        let c = case();
        let all = candidates(&c);
        let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            &names[..3],
            [
                "remove fault #1 (drop-interrupt)",
                "remove fault #2 (status)",
                "remove fault #3 (delay)"
            ]
        );
        for want in [
            "fault #1: probability 0.3 -> once",
            "fault #2: every 4 -> once",
            "fault #3: delay_ms 20 -> 10",
            "fault #3: after 1 -> none",
            "workload reset-under-load -> io",
            "qd 8 -> 4",
            "blocks 64 -> 32",
        ] {
            assert!(names.contains(&want), "{want} not in {names:?}");
        }
        for (name, cand) in &all {
            cand.plan().unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_ne!(cand, &c, "{name}");
        }
    }

    #[test]
    fn shrinking_keeps_only_the_steps_that_still_break_the_clause() {
        // The "bug" bites whenever a virtio-busy status is in the plan.
        let mut runs = 0;
        let mut log = Vec::new();
        let shrunk = shrink(
            &case(),
            Clause::Failure,
            3,
            &mut |c: &Case, n| {
                runs += n;
                let bites = c.faults.iter().any(|f| f.get("status").is_some());
                vec![if bites { found() } else { Verdict::Pass }; n]
            },
            &mut |s| log.push(s.clone()),
        );
        assert_eq!(shrunk.case.faults.len(), 1);
        let f = &shrunk.case.faults[0];
        assert_eq!(f.kind, "status");
        assert_eq!(
            f.get("once"),
            Some(&Value::Bool(true)),
            "every 4 became once"
        );
        assert_eq!(shrunk.case.guest.queue_depth, 1);
        assert_eq!(shrunk.case.guest.blocks, 4);
        assert_eq!(shrunk.case.guest.workload, Workload::Io);
        assert!(log
            .iter()
            .any(|s| !s.kept && s.change.starts_with("remove fault #1 (status)")));
        assert_eq!(runs, shrunk.runs);
        assert!(log.iter().filter(|s| s.kept).all(|s| s.matched == 3));
    }

    #[test]
    fn a_step_that_fails_another_way_is_not_kept() {
        let shrunk = shrink(
            &case(),
            Clause::Rule,
            3,
            &mut |_, n| vec![found(); n],
            &mut |_| {},
        );
        assert_eq!(shrunk.case, case(), "every run broke another clause");
        assert!(shrunk.steps.iter().all(|s| !s.kept && s.matched == 0));
    }
}
