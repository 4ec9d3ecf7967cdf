//! The fault flags of the command line, flattened into `args::Args`.

use std::path::PathBuf;

use super::plan::{Plan, PlanError};

#[derive(clap::Args, Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultArgs {
    /// Fault plan (TOML; see docs/fault-plan.md).
    #[arg(long, value_name = "FILE")]
    pub fault_plan: Option<PathBuf>,
    /// One fault in shorthand, after the plan file's and the presets' (repeatable).
    #[arg(long = "fault", value_name = "KIND:key=value,...")]
    pub faults: Vec<String>,
    /// A named fault preset (repeatable).
    #[arg(long = "fault-preset", value_name = "NAME")]
    pub fault_presets: Vec<String>,
    /// Seed of every random fault decision; overrides the plan's.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// Write the fault trace (JSON lines) to FILE: a new file, or an empty one or an
    /// earlier trace, which is overwritten; any other file is refused.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Unix socket to change the plan and read statistics while running (mode 0600; a
    /// stale socket there is replaced, anything else refused).
    #[arg(long, value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
}

impl FaultArgs {
    /// The plan the flags describe: file, presets, shorthands, then `--seed`.
    pub fn plan(&self) -> Result<Plan, PlanError> {
        let mut plan = Plan::from_cli(
            self.fault_plan.as_deref(),
            &self.fault_presets,
            &self.faults,
        )?;
        if let Some(seed) = self.seed {
            plan.seed = seed;
        }
        Ok(plan)
    }

    /// Whether the request path needs the engine at all: an empty plan with no trace and
    /// no control socket can never inject or record anything.
    pub fn needs_engine(&self, plan: &Plan) -> bool {
        !plan.is_empty() || self.trace.is_some() || self.control_socket.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        faults: FaultArgs,
    }

    fn parse(argv: &[&str]) -> FaultArgs {
        Cli::try_parse_from(std::iter::once("x").chain(argv.iter().copied()))
            .expect("clap accepts the flags")
            .faults
    }

    #[test]
    fn flags_build_the_plan_in_order_and_seed_overrides() {
        let a = parse(&[
            "--fault-preset",
            "lossy",
            "--fault",
            "drop-interrupt:every=3",
            "--fault",
            "delay:delay_ms=5",
            "--seed",
            "99",
            "--trace",
            "/tmp/t",
        ]);
        let plan = a.plan().unwrap();
        assert_eq!(plan.seed, 99);
        let kinds: Vec<_> = plan.faults.iter().map(|f| f.action.kind().name()).collect();
        assert_eq!(kinds.last(), Some(&"delay"));
        assert_eq!(kinds[kinds.len() - 2], "drop-interrupt");
        assert!(a.needs_engine(&plan));
    }

    #[test]
    fn no_flags_means_no_engine_work() {
        let a = parse(&[]);
        let plan = a.plan().unwrap();
        assert!(plan.is_empty());
        assert!(!a.needs_engine(&plan));
        assert!(parse(&["--trace", "t"]).needs_engine(&plan));
    }

    #[test]
    fn bad_shorthand_is_a_plan_error() {
        let a = parse(&["--fault", "drop-interrupt:every=0"]);
        assert!(a.plan().is_err());
    }
}
