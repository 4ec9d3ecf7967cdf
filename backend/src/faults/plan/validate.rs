//! Validation: a [`RawFault`] becomes a [`FaultSpec`], or a [`KeyError`] naming the key
//! at fault.

use std::time::Duration;

use super::errors::KeyError;
use super::opcodes::parse_opcode;
use super::raw::{NumOrName, RawFault};
use super::spec::{
    DataDirection, DelayDist, FaultAction, FaultKind, FaultSpec, Matcher, NewCommandPolicy,
    QueueMatch, RequestClass, ResetReason, Schedule, StatusOverride, TmfFailure, TmfKind, Trigger,
    VirtioEvent,
};
use super::MAX_LUN;

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn check_probability(key: &'static str, p: f64) -> Result<f64, KeyError> {
    if p.is_finite() && (0.0..=1.0).contains(&p) {
        Ok(p)
    } else {
        Err(KeyError::at(key, format!("{p} is not between 0 and 1")))
    }
}

impl FaultSpec {
    /// Validate one fault. `allow_corruption` is the plan's top-level switch.
    pub fn from_raw(raw: RawFault, allow_corruption: bool) -> Result<FaultSpec, KeyError> {
        let kind = FaultKind::from_name(&raw.kind).ok_or_else(|| {
            let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
            KeyError::at(
                "kind",
                format!(
                    "unknown fault kind `{}` (expected one of: {})",
                    raw.kind,
                    known.join(", ")
                ),
            )
        })?;
        const TRIGGER_KEYS: &[&str] = &[
            "name",
            "enabled",
            "every",
            "probability",
            "after",
            "times",
            "once",
            "window_ms",
            "state",
            "set_state",
        ];
        for key in raw.present_keys() {
            if !TRIGGER_KEYS.contains(&key) && !kind.own_keys().contains(&key) {
                return Err(KeyError::at(
                    key,
                    format!("does not apply to kind `{kind}`"),
                ));
            }
        }
        super::bounds::check(&raw)?;
        if kind == FaultKind::Corrupt && !allow_corruption {
            return Err(KeyError::at(
                "kind",
                "kind `corrupt` needs `allow_corruption = true` at the top level of the plan",
            ));
        }
        let trigger = Self::trigger(&raw)?;
        let matcher = Self::matcher(&raw, kind)?;
        let action = Self::action(&raw, kind)?;
        Ok(FaultSpec {
            name: raw.name.clone(),
            enabled: raw.enabled.unwrap_or(true),
            matcher,
            trigger,
            action,
            raw,
        })
    }

    fn trigger(raw: &RawFault) -> Result<Trigger, KeyError> {
        if raw.every == Some(0) {
            return Err(KeyError::at("every", "must be at least 1"));
        }
        if raw.times == Some(0) {
            return Err(KeyError::at(
                "times",
                "must be at least 1 (use enabled = false to switch a fault off)",
            ));
        }
        let times = match (raw.once, raw.times) {
            (Some(_), Some(_)) => {
                return Err(KeyError::at(
                    "once",
                    "give either `once` or `times`, not both",
                ))
            }
            (Some(true), None) => Some(1),
            (Some(false), None) => None,
            (None, t) => t,
        };
        let probability = raw
            .probability
            .map(|p| check_probability("probability", p))
            .transpose()?;
        let window = match raw.window_ms {
            Some([s, e]) if s >= e => {
                return Err(KeyError::at(
                    "window_ms",
                    format!("start {s} must be before end {e}"),
                ))
            }
            Some([s, e]) => Some((ms(s), ms(e))),
            None => None,
        };
        Ok(Trigger {
            state: raw.state,
            set_state: raw.set_state,
            window,
            after: raw.after.unwrap_or(0),
            every: raw.every,
            times,
            probability,
        })
    }

    fn matcher(raw: &RawFault, kind: FaultKind) -> Result<Matcher, KeyError> {
        let queue = Self::queue_match(raw)?;
        if let Some(lun) = raw.lun {
            if lun > MAX_LUN {
                return Err(KeyError::at("lun", format!("lun {lun} is above {MAX_LUN}")));
            }
        }
        let opcode = raw
            .opcode
            .as_ref()
            .map(parse_opcode)
            .transpose()
            .map_err(|m| KeyError::at("opcode", m))?;
        let tmf = Self::tmf_subtype(raw)?;
        let lba = match raw.lba {
            Some([s, e]) if s > e => {
                return Err(KeyError::at("lba", format!("start {s} is after end {e}")))
            }
            Some([s, e]) => Some((s, e)),
            None => None,
        };
        let direction = Self::direction(raw)?;
        let class = Self::request_class(raw, kind, tmf)?;
        Ok(Matcher {
            class,
            queue,
            target: if kind == FaultKind::Event {
                None
            } else {
                raw.target
            },
            lun: if kind == FaultKind::Event {
                None
            } else {
                raw.lun
            },
            opcode,
            lba,
            direction,
        })
    }

    /// The `queue` key of a matcher.
    fn queue_match(raw: &RawFault) -> Result<QueueMatch, KeyError> {
        Ok(match &raw.queue {
            None => QueueMatch::Any,
            Some(NumOrName::Num(n)) => QueueMatch::Index(
                u16::try_from(*n).map_err(|_| KeyError::at("queue", format!("queue {n} is above 65535")))?,
            ),
            Some(NumOrName::Name(s)) => match s.as_str() {
                "control" => QueueMatch::Index(QueueMatch::CONTROL),
                "event" => QueueMatch::Index(QueueMatch::EVENT),
                "request" => QueueMatch::Request,
                "any" => QueueMatch::Any,
                other => {
                    return Err(KeyError::at(
                        "queue",
                        format!("unknown queue `{other}` (expected control, event, request, any or a number)"),
                    ))
                }
            },
        })
    }

    /// The `tmf` key: one TMF subtype.
    fn tmf_subtype(raw: &RawFault) -> Result<Option<TmfKind>, KeyError> {
        raw.tmf
            .as_deref()
            .map(|t| {
                TmfKind::from_name(t).ok_or_else(|| {
                    KeyError::at(
                        "tmf",
                        format!(
                            "unknown TMF `{t}` (expected abort-task, abort-task-set, clear-aca, clear-task-set, \
                             i-t-nexus-reset, lu-reset, query-task or query-task-set)"
                        ),
                    )
                })
            })
            .transpose()
    }

    /// The `direction` key.
    fn direction(raw: &RawFault) -> Result<Option<DataDirection>, KeyError> {
        raw.direction
            .as_deref()
            .map(|d| match d {
                "none" => Ok(DataDirection::None),
                "read" => Ok(DataDirection::Read),
                "write" => Ok(DataDirection::Write),
                other => Err(KeyError::at(
                    "direction",
                    format!("unknown direction `{other}` (expected read, write or none)"),
                )),
            })
            .transpose()
    }

    /// Which requests a fault of `kind` looks at: implied by the kind, or (for the kinds
    /// that apply to any request) by `request`, `tmf` and the command-only keys.
    fn request_class(
        raw: &RawFault,
        kind: FaultKind,
        tmf: Option<TmfKind>,
    ) -> Result<RequestClass, KeyError> {
        let command_keys = [
            ("opcode", raw.opcode.is_some()),
            ("lba", raw.lba.is_some()),
            ("direction", raw.direction.is_some()),
        ]
        .into_iter()
        .find(|(_, set)| *set)
        .map(|(k, _)| k);
        Ok(match kind {
            FaultKind::Lose | FaultKind::Status | FaultKind::Corrupt => RequestClass::Command,
            FaultKind::SlowTmf | FaultKind::HangTmf | FaultKind::FailTmf => RequestClass::Tmf(tmf),
            FaultKind::SpuriousInterrupt | FaultKind::Event => RequestClass::Any,
            FaultKind::DropInterrupt | FaultKind::Delay => {
                let class = match raw.request.as_deref() {
                    None if tmf.is_some() => RequestClass::Tmf(tmf),
                    None if command_keys.is_some() => RequestClass::Command,
                    None => RequestClass::Any,
                    Some("command") => RequestClass::Command,
                    Some("tmf") => RequestClass::Tmf(tmf),
                    Some("an") => RequestClass::An,
                    Some("any") => RequestClass::Any,
                    Some(other) => {
                        return Err(KeyError::at(
                            "request",
                            format!(
                            "unknown request class `{other}` (expected command, tmf, an or any)"
                        ),
                        ))
                    }
                };
                if tmf.is_some() && !matches!(class, RequestClass::Tmf(_)) {
                    return Err(KeyError::at("tmf", "only TMF requests have a TMF subtype"));
                }
                if let Some(key) = command_keys {
                    if class != RequestClass::Command {
                        return Err(KeyError::at(
                            key,
                            "only SCSI commands have this (not TMFs or AN requests)",
                        ));
                    }
                }
                class
            }
        })
    }

    fn schedule(raw: &RawFault) -> Result<Schedule, KeyError> {
        if raw.interval_ms == Some(0) {
            return Err(KeyError::at("interval_ms", "must be at least 1"));
        }
        match (raw.at_ms, raw.interval_ms) {
            (None, None) => Err(KeyError {
                key: None,
                message: "a time-driven fault needs `interval_ms` (a period) or `at_ms` (a moment)"
                    .into(),
            }),
            (at, interval) => Ok(Schedule {
                first: ms(at.or(interval).unwrap_or(0)),
                interval: interval.map(ms),
            }),
        }
    }

    fn action(raw: &RawFault, kind: FaultKind) -> Result<FaultAction, KeyError> {
        Ok(match kind {
            FaultKind::DropInterrupt => FaultAction::DropInterrupt,
            FaultKind::Lose => FaultAction::Lose,
            FaultKind::HangTmf => FaultAction::HangTmf,
            FaultKind::Delay => FaultAction::Delay(Self::delay(raw)?),
            FaultKind::SlowTmf => FaultAction::SlowTmf {
                duration: ms(raw
                    .duration_ms
                    .ok_or_else(|| KeyError::at("duration_ms", "slow-tmf needs `duration_ms`"))?),
                new_commands: match raw.new_commands.as_deref().unwrap_or("busy") {
                    "busy" => NewCommandPolicy::Busy,
                    "hold" => NewCommandPolicy::Hold,
                    other => {
                        return Err(KeyError::at(
                            "new_commands",
                            format!("unknown policy `{other}` (expected busy or hold)"),
                        ))
                    }
                },
            },
            FaultKind::FailTmf => FaultAction::FailTmf(match raw.response.as_deref().unwrap_or("rejected") {
                "rejected" => TmfFailure::FunctionRejected,
                "failed" | "failure" => TmfFailure::Failure,
                other => {
                    return Err(KeyError::at(
                        "response",
                        format!("unknown TMF response `{other}` (expected rejected or failed)"),
                    ))
                }
            }),
            FaultKind::SpuriousInterrupt => {
                let queue = match &raw.queue {
                    None => QueueMatch::FIRST_REQUEST,
                    Some(NumOrName::Num(n)) => u16::try_from(*n)
                        .map_err(|_| KeyError::at("queue", format!("queue {n} is above 65535")))?,
                    Some(NumOrName::Name(s)) => match s.as_str() {
                        "control" => QueueMatch::CONTROL,
                        "event" => QueueMatch::EVENT,
                        "request" => QueueMatch::FIRST_REQUEST,
                        other => {
                            return Err(KeyError::at(
                                "queue",
                                format!("unknown queue `{other}` (expected control, event, request or a number)"),
                            ))
                        }
                    },
                };
                let burst = raw.burst.unwrap_or(1);
                if burst == 0 {
                    return Err(KeyError::at("burst", "must be at least 1"));
                }
                FaultAction::SpuriousInterrupt {
                    queue,
                    burst,
                    schedule: Self::schedule(raw)?,
                }
            }
            FaultKind::Event => FaultAction::Event {
                event: VirtioEvent::from_keys(
                    raw.event.as_deref().ok_or_else(|| KeyError {
                        key: None,
                        message: "kind `event` needs `event` (transport-reset, param-change or events-missed)".into(),
                    })?,
                    raw.target,
                    raw.lun,
                    raw.reason.as_deref(),
                    raw.asc,
                    raw.ascq,
                )?,
                schedule: Self::schedule(raw)?,
            },
            FaultKind::Status => FaultAction::Status(Self::status(raw)?),
            FaultKind::Corrupt => {
                let bytes = raw.bytes.unwrap_or(1);
                if bytes == 0 {
                    return Err(KeyError::at("bytes", "must be at least 1"));
                }
                FaultAction::Corrupt { bytes }
            }
        })
    }

    fn delay(raw: &RawFault) -> Result<DelayDist, KeyError> {
        let dist = raw.distribution.as_deref().unwrap_or("fixed");
        let only = |allowed: &[&'static str]| -> Result<(), KeyError> {
            for (key, set) in [
                ("delay_ms", raw.delay_ms.is_some()),
                ("min_ms", raw.min_ms.is_some()),
                ("max_ms", raw.max_ms.is_some()),
                ("alpha", raw.alpha.is_some()),
            ] {
                if set && !allowed.contains(&key) {
                    return Err(KeyError::at(
                        key,
                        format!("does not apply to distribution `{dist}`"),
                    ));
                }
            }
            Ok(())
        };
        let need = |key: &'static str, v: Option<u64>| {
            v.ok_or_else(|| KeyError {
                key: None,
                message: format!("distribution `{dist}` needs `{key}`"),
            })
        };
        match dist {
            "fixed" => {
                only(&["delay_ms"])?;
                Ok(DelayDist::Fixed(ms(need("delay_ms", raw.delay_ms)?)))
            }
            "uniform" => {
                only(&["min_ms", "max_ms"])?;
                let (min, max) = (need("min_ms", raw.min_ms)?, need("max_ms", raw.max_ms)?);
                if min > max {
                    return Err(KeyError::at(
                        "min_ms",
                        format!("min_ms {min} is above max_ms {max}"),
                    ));
                }
                Ok(DelayDist::Uniform {
                    min: ms(min),
                    max: ms(max),
                })
            }
            "long-tail" => {
                only(&["min_ms", "max_ms", "alpha"])?;
                let (min, max) = (need("min_ms", raw.min_ms)?, need("max_ms", raw.max_ms)?);
                if min == 0 {
                    return Err(KeyError::at(
                        "min_ms",
                        "the long tail's scale must be at least 1 ms",
                    ));
                }
                if min > max {
                    return Err(KeyError::at(
                        "min_ms",
                        format!("min_ms {min} is above max_ms {max}"),
                    ));
                }
                // Its range is checked with the other bounds.
                let alpha = raw.alpha.unwrap_or(1.5);
                Ok(DelayDist::LongTail {
                    min: ms(min),
                    max: ms(max),
                    alpha,
                })
            }
            other => Err(KeyError::at(
                "distribution",
                format!("unknown distribution `{other}` (expected fixed, uniform or long-tail)"),
            )),
        }
    }

    fn status(raw: &RawFault) -> Result<StatusOverride, KeyError> {
        let name = raw.status.as_deref().ok_or_else(|| KeyError {
            key: None,
            message: "kind `status` needs `status`".into(),
        })?;
        let sense_keys = [
            ("sense_key", raw.sense_key.is_some()),
            ("asc", raw.asc.is_some()),
            ("ascq", raw.ascq.is_some()),
        ];
        if name != "check-condition" {
            if let Some((k, _)) = sense_keys.iter().find(|(_, set)| *set) {
                return Err(KeyError::at(k, "only applies to status `check-condition`"));
            }
        }
        if name != "short-transfer" && raw.residual.is_some() {
            return Err(KeyError::at(
                "residual",
                "only applies to status `short-transfer`",
            ));
        }
        match name {
            "check-condition" => {
                let sense_key = raw.sense_key.ok_or_else(|| KeyError {
                    key: None,
                    message: "status `check-condition` needs `sense_key`".into(),
                })?;
                if sense_key > 0x0f {
                    return Err(KeyError::at(
                        "sense_key",
                        format!("{sense_key:#x} is above 0xf"),
                    ));
                }
                Ok(StatusOverride::CheckCondition {
                    sense_key,
                    asc: raw.asc.unwrap_or(0),
                    ascq: raw.ascq.unwrap_or(0),
                })
            }
            "short-transfer" => {
                let residual = raw.residual.ok_or_else(|| KeyError {
                    key: None,
                    message: "status `short-transfer` needs `residual` (bytes)".into(),
                })?;
                if residual == 0 {
                    return Err(KeyError::at("residual", "must be at least 1"));
                }
                Ok(StatusOverride::ShortTransfer { residual })
            }
            other => StatusOverride::NAMES
                .iter()
                .find(|(n, _)| *n == other)
                .map(|(_, s)| *s)
                .ok_or_else(|| {
                    let names: Vec<&str> = StatusOverride::NAMES.iter().map(|(n, _)| *n).collect();
                    KeyError::at(
                        "status",
                        format!(
                            "unknown status `{other}` (expected {} or short-transfer)",
                            names.join(", ")
                        ),
                    )
                }),
        }
    }
}

impl VirtioEvent {
    /// Build an event from its plan (or control-socket) keys.
    pub fn from_keys(
        event: &str,
        target: Option<u8>,
        lun: Option<u16>,
        reason: Option<&str>,
        asc: Option<u8>,
        ascq: Option<u8>,
    ) -> Result<VirtioEvent, KeyError> {
        let target = target.unwrap_or(0);
        let lun = lun.unwrap_or(0);
        if lun > MAX_LUN {
            return Err(KeyError::at("lun", format!("lun {lun} is above {MAX_LUN}")));
        }
        match event {
            "transport-reset" => {
                if asc.is_some() || ascq.is_some() {
                    return Err(KeyError::at(
                        if asc.is_some() { "asc" } else { "ascq" },
                        "asc/ascq only apply to event `param-change`",
                    ));
                }
                let reason = match reason.unwrap_or("rescan") {
                    "hard" | "reset" => ResetReason::Hard,
                    "rescan" => ResetReason::Rescan,
                    "removed" => ResetReason::Removed,
                    other => {
                        return Err(KeyError::at(
                            "reason",
                            format!("unknown reason `{other}` (expected hard, rescan or removed)"),
                        ))
                    }
                };
                Ok(VirtioEvent::TransportReset {
                    target,
                    lun,
                    reason,
                })
            }
            "param-change" => {
                if reason.is_some() {
                    return Err(KeyError::at(
                        "reason",
                        "reason only applies to event `transport-reset`",
                    ));
                }
                // Default: CAPACITY DATA HAS CHANGED.
                Ok(VirtioEvent::ParamChange {
                    target,
                    lun,
                    asc: asc.unwrap_or(0x2a),
                    ascq: ascq.unwrap_or(0x09),
                })
            }
            "events-missed" => {
                if reason.is_some() || asc.is_some() || ascq.is_some() {
                    return Err(KeyError::at(
                        "event",
                        "event `events-missed` takes no reason, asc or ascq",
                    ));
                }
                Ok(VirtioEvent::EventsMissed)
            }
            other => Err(KeyError::at(
                "event",
                format!(
                    "unknown event `{other}` (expected transport-reset, param-change or events-missed)"
                ),
            )),
        }
    }
}
