//! The fault plan: its TOML file format, the `--fault` shorthand and the named presets,
//! all validated into one [`Plan`]. Parsing is pure (no I/O) so that it can be fuzzed.
//!
//! The schema is documented in `docs/fault-plan.md` at the top of the repository. The plan
//! as written is `raw`, the validated form `spec`; `validate` turns one into the
//! other (within `bounds`), `shorthand` reads `--fault`, and `errors` says where a plan
//! went wrong.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub mod bounds;
mod errors;
mod opcodes;
mod raw;
mod shorthand;
mod spec;
mod validate;

#[cfg(test)]
mod tests;

use errors::{fault_key_offset, plain_message};
pub use errors::{line_column, KeyError, PlanError};
pub use opcodes::{opcode_name, parse_opcode};
use raw::RawPlan;
pub use raw::{NumOrName, RawFault};
pub use spec::{
    DataDirection, DelayDist, FaultAction, FaultKind, FaultSpec, Matcher, NewCommandPolicy,
    QueueMatch, RequestClass, ResetReason, Schedule, StatusOverride, TmfFailure, TmfKind, Trigger,
    VirtioEvent, VirtioResponse,
};

use super::presets;

/// Largest LUN a virtio-scsi flat LUN address can carry.
pub const MAX_LUN: u16 = 16383;

/// A validated fault plan.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub seed: u64,
    pub allow_corruption: bool,
    pub faults: Vec<FaultSpec>,
}

impl Default for Plan {
    fn default() -> Self {
        Plan {
            seed: Plan::DEFAULT_SEED,
            allow_corruption: false,
            faults: Vec::new(),
        }
    }
}

impl Plan {
    pub const DEFAULT_SEED: u64 = 0;

    /// Parse and validate a plan. Pure: this is the fuzzing entry point.
    pub fn from_toml_str(text: &str) -> Result<Plan, PlanError> {
        Plan::from_toml_str_named(text, "<plan>")
    }

    /// As [`Plan::from_toml_str`], naming `origin` (usually the file) in errors.
    pub fn from_toml_str_named(text: &str, origin: &str) -> Result<Plan, PlanError> {
        Plan::parse_named(text, origin).map(|(plan, _)| plan)
    }

    /// The plan, and whether the text gave its seed (an absent one is [`Plan::DEFAULT_SEED`]).
    fn parse_named(text: &str, origin: &str) -> Result<(Plan, bool), PlanError> {
        let invalid = |offset: usize, message: String| {
            let (line, column) = line_column(text, offset);
            PlanError::Invalid {
                origin: origin.to_owned(),
                line,
                column,
                message,
            }
        };
        let raw: RawPlan = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            invalid(offset, plain_message(e.message()))
        })?;
        if raw.fault.len() > bounds::MAX_FAULTS {
            let offset = fault_key_offset(text, bounds::MAX_FAULTS, None);
            return Err(invalid(
                offset,
                format!(
                    "fault #{}: {}",
                    bounds::MAX_FAULTS + 1,
                    PlanError::TooManyFaults
                ),
            ));
        }
        let allow_corruption = raw.allow_corruption.unwrap_or(false);
        let mut faults = Vec::with_capacity(raw.fault.len());
        for (index, f) in raw.fault.into_iter().enumerate() {
            let spec = FaultSpec::from_raw(f, allow_corruption).map_err(|e| {
                let offset = fault_key_offset(text, index, e.key);
                invalid(offset, format!("fault #{}: {e}", index + 1))
            })?;
            faults.push(spec);
        }
        let plan = Plan {
            seed: raw.seed.unwrap_or(Plan::DEFAULT_SEED),
            allow_corruption,
            faults,
        };
        Ok((plan, raw.seed.is_some()))
    }

    /// Read and validate a plan file.
    pub fn from_file(path: &Path) -> Result<Plan, PlanError> {
        Plan::read_file(path).map(|(plan, _)| plan)
    }

    /// A plan file, and whether it gave its seed.
    /// A regular file only, opened without blocking (a FIFO never hangs start-up) and
    /// read up to [`Plan::FILE_MAX`] (`/dev/zero` never fills memory).
    fn read_file(path: &Path) -> Result<(Plan, bool), PlanError> {
        let name = || path.display().to_string();
        let could_not = |source| PlanError::CouldNotRead {
            path: name(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(path)
            .map_err(could_not)?;
        if !file.metadata().map_err(could_not)?.is_file() {
            return Err(PlanError::NotAFile { path: name() });
        }
        let mut text = String::new();
        file.take(Plan::FILE_MAX + 1)
            .read_to_string(&mut text)
            .map_err(could_not)?;
        if text.len() as u64 > Plan::FILE_MAX {
            return Err(PlanError::TooLarge {
                path: name(),
                max: Plan::FILE_MAX,
            });
        }
        Plan::parse_named(&text, &name())
    }

    /// The largest plan file read: far more than the most faults a plan may hold.
    pub const FILE_MAX: u64 = 1 << 20;

    /// A named preset (`--fault-preset NAME`); presets are plan texts.
    pub fn from_preset(name: &str) -> Result<Plan, PlanError> {
        let text = presets::preset_toml(name).ok_or_else(|| PlanError::UnknownPreset {
            name: name.to_owned(),
            known: presets::PRESET_NAMES.join(", "),
        })?;
        Plan::from_toml_str_named(text, &format!("<preset {name}>"))
    }

    /// The plan the command line asks for: `--fault-plan FILE` (optional), then each
    /// `--fault-preset NAME`, then each `--fault KIND:key=value,...`, in that order. The seed
    /// is the file's when it gives one, else the first preset's (`--seed` overrides both).
    pub fn from_cli(
        plan_file: Option<&Path>,
        presets: &[String],
        shorthands: &[String],
    ) -> Result<Plan, PlanError> {
        let (mut plan, mut seed_given) = match plan_file {
            Some(path) => {
                let (plan, given) = Plan::read_file(path)?;
                (Some(plan), given)
            }
            None => (None, false),
        };
        for name in presets {
            let preset = Plan::from_preset(name)?;
            match &mut plan {
                Some(p) => {
                    if !seed_given {
                        p.seed = preset.seed;
                        seed_given = true;
                    }
                    p.extend(preset)?;
                }
                None => {
                    plan = Some(preset);
                    seed_given = true;
                }
            }
        }
        let mut plan = plan.unwrap_or_default();
        for text in shorthands {
            let spec = FaultSpec::from_shorthand(text, plan.allow_corruption)?;
            plan.push(spec)?;
        }
        Ok(plan)
    }

    /// Append a fault (a shorthand, or another plan's), refusing `corrupt` unless allowed.
    pub fn push(&mut self, spec: FaultSpec) -> Result<(), PlanError> {
        if spec.action.kind() == FaultKind::Corrupt && !self.allow_corruption {
            return Err(PlanError::CorruptionNotAllowed);
        }
        if self.faults.len() >= bounds::MAX_FAULTS {
            return Err(PlanError::TooManyFaults);
        }
        self.faults.push(spec);
        Ok(())
    }

    /// Append another plan's faults (e.g. a preset after the plan file). The seed stays.
    pub fn extend(&mut self, other: Plan) -> Result<(), PlanError> {
        other.faults.into_iter().try_for_each(|f| self.push(f))
    }

    /// Whether any fault is present (an empty plan lets the request path skip the engine).
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }
}
