//! What the matrix runs: the scenarios `--only` and `--skip` leave, each scenario's
//! positive run and negative control, repeated.

use crate::scenario::file::{Scenario, Variant};

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error("--{flag} {name}: no such scenario (known: {known})")]
    UnknownScenario {
        flag: &'static str,
        name: String,
        known: String,
    },
    #[error("--only and --skip leave no scenario to run")]
    NothingToRun,
}

/// The scenarios `--only` (all when empty) and `--skip` leave; a name that matches no
/// scenario is an error, so a typo never shrinks the matrix silently.
pub fn select(
    all: Vec<Scenario>,
    only: &[String],
    skip: &[String],
) -> Result<Vec<Scenario>, SelectError> {
    let known = || {
        all.iter()
            .map(|s| s.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    for (flag, names) in [("only", only), ("skip", skip)] {
        if let Some(name) = names.iter().find(|n| !all.iter().any(|s| &s.name == *n)) {
            return Err(SelectError::UnknownScenario {
                flag,
                name: name.clone(),
                known: known(),
            });
        }
    }
    let chosen: Vec<Scenario> = all
        .into_iter()
        .filter(|s| only.is_empty() || only.contains(&s.name))
        .filter(|s| !skip.contains(&s.name))
        .collect();
    if chosen.is_empty() {
        return Err(SelectError::NothingToRun);
    }
    Ok(chosen)
}

/// One run to do.
#[derive(Clone, Debug)]
pub struct Planned {
    pub scenario: Scenario,
    pub negative: bool,
    /// 1-based, when the matrix repeats.
    pub repeat: Option<u32>,
}

impl Planned {
    /// The directory name: `NAME[-negative][-rK]`.
    pub fn dir_name(&self) -> String {
        let mut name = self.scenario.name.clone();
        if self.negative {
            name.push_str("-negative");
        }
        if let Some(k) = self.repeat {
            name.push_str(&format!("-r{k}"));
        }
        name
    }

    pub fn variant(&self) -> &Variant {
        match (&self.scenario.negative, self.negative) {
            (Some(n), true) => n,
            _ => &self.scenario.positive,
        }
    }
}

/// Every run of `scenarios`, in order: each scenario's positive run, then its negative
/// control, `repeat` times.
pub fn plan(scenarios: &[Scenario], repeat: u32) -> Vec<Planned> {
    let mut runs = Vec::new();
    for s in scenarios {
        for k in 1..=repeat.max(1) {
            for (negative, _) in s.variants() {
                runs.push(Planned {
                    scenario: s.clone(),
                    negative,
                    repeat: (repeat > 1).then_some(k),
                });
            }
        }
    }
    runs
}
