//! The faults the soak switches on and off over the control socket: every kind that
//! leaves data alone (no `corrupt`), with rates that keep I/O flowing. A command a fault
//! fails was not acknowledged, so its write may or may not have happened; a command a
//! fault loses is ended by the soak's ABORT TASK or LU reset.

use serde_json::{json, Value};

use crate::bench::frontend::load::Rng;

use crate::launch::control::{Control, ControlError};

/// Faults active at once at most.
const MAX_ACTIVE: usize = 4;

/// A random fault of the catalogue, as a `[[fault]]` table in JSON.
pub fn random_fault(rng: &mut Rng) -> Value {
    let pick =
        |rng: &mut Rng, options: &[&'static str]| options[rng.below(options.len() as u64) as usize];
    match rng.below(14) {
        0 => json!({ "kind": "delay", "distribution": "uniform", "min_ms": 1,
                     "max_ms": rng.between(2, 50), "probability": 0.2 }),
        1 => json!({ "kind": "delay", "distribution": "long-tail", "min_ms": 1,
                     "max_ms": 300, "probability": 0.05 }),
        2 => json!({ "kind": "delay", "request": "tmf", "delay_ms": rng.between(10, 300) }),
        3 => json!({ "kind": "drop-interrupt", "queue": "request", "probability": 0.2 }),
        4 => json!({ "kind": "drop-interrupt", "request": "tmf", "probability": 0.5 }),
        5 => json!({ "kind": "status", "status": "busy", "probability": 0.05 }),
        6 => json!({ "kind": "status", "status": "task-set-full", "probability": 0.05 }),
        7 => json!({ "kind": "lose", "direction": pick(rng, &["write", "read"]),
                     "probability": 0.02 }),
        8 => json!({ "kind": "slow-tmf", "tmf": "lu-reset", "duration_ms": rng.between(100, 800),
                     "new_commands": pick(rng, &["busy", "hold"]) }),
        9 => {
            json!({ "kind": "slow-tmf", "tmf": "abort-task", "duration_ms": rng.between(50, 500) })
        }
        10 => json!({ "kind": "fail-tmf", "response": pick(rng, &["rejected", "failed"]),
                      "probability": 0.5 }),
        11 => json!({ "kind": "hang-tmf", "probability": 0.2 }),
        12 => json!({ "kind": "spurious-interrupt", "interval_ms": rng.between(5, 50),
                      "burst": rng.between(1, 4), "queue": pick(rng, &["request", "control"]) }),
        _ => json!({ "kind": "status", "status": "check-condition", "sense_key": 6,
                     "asc": 0x29, "probability": 0.02 }),
    }
}

/// The faults the soak has switched on in the running backend.
#[derive(Debug, Default)]
pub struct ActiveFaults {
    ids: Vec<u64>,
    /// Faults switched on or off so far.
    pub switches: u64,
}

impl ActiveFaults {
    /// Switches one fault: on when few are, off when many are, else either.
    pub fn toggle(&mut self, control: &mut Control, rng: &mut Rng) -> Result<(), ControlError> {
        let add = self.ids.is_empty() || (self.ids.len() < MAX_ACTIVE && rng.percent(50));
        if add {
            let id = control.add(&random_fault(rng))?;
            self.ids.push(id);
        } else {
            let i = rng.below(self.ids.len() as u64) as usize;
            control.remove(self.ids.swap_remove(i))?;
        }
        self.switches += 1;
        Ok(())
    }

    /// Switches every fault off (before a checkpoint).
    pub fn clear(&mut self, control: &mut Control) -> Result<(), ControlError> {
        for id in self.ids.drain(..) {
            control.remove(id)?;
            self.switches += 1;
        }
        Ok(())
    }

    /// A new backend starts with none.
    pub fn forget(&mut self) {
        self.ids.clear();
    }

    pub fn active(&self) -> usize {
        self.ids.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flakyhba_backend::faults::FaultSpec;

    /// Every fault of the catalogue is a valid plan entry and none corrupts.
    #[test]
    fn every_fault_of_the_catalogue_is_valid_and_none_corrupts() {
        let mut rng = Rng::new(1);
        let mut kinds = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let f = random_fault(&mut rng);
            let kind = f["kind"].as_str().unwrap().to_owned();
            assert_ne!(kind, "corrupt");
            FaultSpec::from_json(f.clone(), false).unwrap_or_else(|e| panic!("{f}: {e}"));
            kinds.insert(kind);
        }
        assert_eq!(kinds.len(), 8, "{kinds:?}");
    }
}
