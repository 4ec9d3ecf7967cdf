//! The verdict on a Linux boot: the guest's `FLAKYHBA-STEP <name> rc=<N>` lines, each
//! judged by the harness itself, its result line and QEMU's exit; and what a run must
//! show, which also sets the kernel command line and the backend's fault.

use serde_json::{Map, Value};

use super::hotplug;
use crate::launch::serial::SerialLine;

/// The marker of a step line on the serial port.
pub const STEP_MARKER: &str = "FLAKYHBA-STEP ";
/// Where the held-read part reads 64 KiB: far from what the boot-time probes touch, and
/// it runs before mkfs, so the backend's one lost read is the guest's.
pub const HELD_LBA: u64 = 409_600;

/// Steps every run must show with rc=0, in the order /init runs them.
const BASE_STEPS: &[&str] = &[
    "modules",
    "find-disk",
    "sg_inq",
    "sg_vpd-sv",
    "sg_vpd-di-listed",
    "sg_readcap",
    "sg_luns",
    "sg_opcodes",
    "sg_modes",
    "sg_turs",
    "sg_sync",
    "sg_unmap",
    "mkfs",
    "e2fsck",
    "mount",
    "fio",
    "umount",
    "e2fsck-after",
    "queues",
    "dmesg",
];
/// Steps of the hot-plug run (`flakyhba.hotadd=N`), which replaces the base steps but for
/// the first two and the last two.
const HOTPLUG_STEPS: &[&str] = &[
    "modules",
    "find-disk",
    "hot-add",
    "hot-add-address",
    "hot-add-size",
    "hot-add-io",
    "hot-remove",
    "resize",
    "resize-io",
    "hotplug-events",
    "queues",
    "dmesg",
];
/// Steps of the held read (`flakyhba.hold=LBA`).
const HELD_STEPS: &[&str] = &[
    "held-pending",
    "lu-reset",
    "held-read",
    "reset-answered",
    "held-after-turs",
];

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LinuxJudgeError {
    #[error("steps failed: {}{}", list_failed(failed), list_missing(missing))]
    Steps {
        failed: Vec<StepResult>,
        missing: Vec<String>,
    },
    #[error("the guest printed no result line")]
    NoResultLine,
    #[error("the guest reports {result:?} (failed: {failed})")]
    GuestFailed { result: String, failed: String },
    #[error(
        "asked for {asked} queues; the disk has {hw} hardware queues and {used} completed I/O"
    )]
    Queues { asked: u16, hw: u64, used: u64 },
    #[error("QEMU exited with {0:?} instead of 0 (the guest powers off after its result)")]
    QemuExit(Option<i32>),
}

fn list_failed(failed: &[StepResult]) -> String {
    failed
        .iter()
        .map(|s| format!("{} rc={}", s.name, s.rc))
        .collect::<Vec<_>>()
        .join(", ")
}

fn list_missing(missing: &[String]) -> String {
    if missing.is_empty() {
        String::new()
    } else {
        format!("; never ran: {}", missing.join(", "))
    }
}

/// One `FLAKYHBA-STEP` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepResult {
    pub name: String,
    pub rc: i32,
}

impl StepResult {
    /// Parses `FLAKYHBA-STEP <name> rc=<N>`; the kernel may print on the same console,
    /// so the marker is looked for anywhere in the line.
    pub fn parse(line: &str) -> Option<StepResult> {
        let rest = &line[line.find(STEP_MARKER)? + STEP_MARKER.len()..];
        let mut words = rest.split_whitespace();
        let name = words.next()?;
        let rc = words.next()?.strip_prefix("rc=")?.parse().ok()?;
        Some(StepResult {
            name: name.to_owned(),
            rc,
        })
    }
}

/// What a run must show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinuxExpectation {
    pub queues: u16,
    pub scsi_timeout_s: Option<u32>,
    pub held_read: bool,
    /// The hot-plug run ([`hotplug`]) instead of the base steps.
    pub hotplug: bool,
}

impl LinuxExpectation {
    pub fn required_steps(&self) -> Vec<&'static str> {
        let mut steps = if self.hotplug {
            HOTPLUG_STEPS.to_vec()
        } else {
            BASE_STEPS.to_vec()
        };
        if self.scsi_timeout_s.is_some() {
            steps.push("timeout");
        }
        if self.held_read {
            steps.extend_from_slice(HELD_STEPS);
        }
        steps
    }

    /// The backend's `--fault` for the held read: lose (hold until ABORT_TASK or a
    /// reset) the first read that touches the guest's 64 KiB at [`HELD_LBA`].
    pub fn backend_fault(&self) -> Option<String> {
        self.held_read.then(|| {
            format!(
                "lose:direction=read,lba={HELD_LBA}..{},once=true",
                HELD_LBA + 127
            )
        })
    }

    /// The kernel command line: the serial console, QEMU exits on a panic (-no-reboot),
    /// and /init's switches.
    pub fn kernel_command_line(&self) -> String {
        let mut line = format!("console=ttyS0 panic=-1 flakyhba.queues={}", self.queues);
        if let Some(s) = self.scsi_timeout_s {
            line.push_str(&format!(" flakyhba.timeout={s}"));
        }
        if self.held_read {
            line.push_str(&format!(" flakyhba.hold={HELD_LBA}"));
        }
        if self.hotplug {
            line.push(' ');
            line.push_str(&hotplug::kernel_switches());
        }
        line
    }
}

/// A passed run, as judged.
#[derive(Clone, Debug, PartialEq)]
pub struct LinuxVerdict {
    pub steps: Vec<StepResult>,
    pub kernel: String,
    pub hw_queues: u64,
    pub queues_used: u64,
}

fn number(result: &Map<String, Value>, key: &str) -> u64 {
    result.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// Judges a run from the serial lines and QEMU's exit code: every step it printed and
/// every step the expectation requires has rc=0, the result line says pass, the disk had
/// the queues asked for and each completed I/O, and QEMU exited by the guest's poweroff.
pub fn judge_linux(
    lines: &[SerialLine],
    exit_code: Option<i32>,
    expect: &LinuxExpectation,
) -> Result<LinuxVerdict, LinuxJudgeError> {
    let steps: Vec<StepResult> = lines
        .iter()
        .filter_map(|l| match l {
            SerialLine::Log(text) => StepResult::parse(text),
            SerialLine::Report(_) => None,
        })
        .collect();
    let failed: Vec<StepResult> = steps.iter().filter(|s| s.rc != 0).cloned().collect();
    let missing: Vec<String> = expect
        .required_steps()
        .into_iter()
        .filter(|name| !steps.iter().any(|s| s.name == *name))
        .map(str::to_owned)
        .collect();
    if !failed.is_empty() || !missing.is_empty() {
        return Err(LinuxJudgeError::Steps { failed, missing });
    }
    let result = lines
        .iter()
        .rev()
        .find_map(SerialLine::result)
        .ok_or(LinuxJudgeError::NoResultLine)?;
    let verdict = result.get("result").and_then(Value::as_str).unwrap_or("");
    if verdict != "pass" {
        return Err(LinuxJudgeError::GuestFailed {
            result: verdict.to_owned(),
            failed: result
                .get("failed")
                .map_or_else(String::new, Value::to_string),
        });
    }
    let (hw, used) = (number(result, "hw_queues"), number(result, "queues_used"));
    let asked = u64::from(expect.queues);
    if hw != asked || used != asked {
        return Err(LinuxJudgeError::Queues {
            asked: expect.queues,
            hw,
            used,
        });
    }
    if exit_code != Some(0) {
        return Err(LinuxJudgeError::QemuExit(exit_code));
    }
    Ok(LinuxVerdict {
        steps,
        kernel: result
            .get("kernel")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        hw_queues: hw,
        queues_used: used,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linux::LinuxOptions;
    use std::time::Duration;

    const PASS_RESULT: &str = r#"{"result":"pass","kernel":"6.1.0-56-amd64","queues":4,"hw_queues":4,"queues_used":4,"steps":21,"failed":[]}"#;

    fn expect(queues: u16) -> LinuxExpectation {
        LinuxExpectation {
            queues,
            scsi_timeout_s: None,
            held_read: false,
            hotplug: false,
        }
    }

    fn transcript(expect: &LinuxExpectation, result: &str) -> Vec<SerialLine> {
        let mut lines = vec![SerialLine::parse("[    5.4] scsi host0: Virtio SCSI HBA")];
        for name in expect.required_steps() {
            lines.push(SerialLine::parse(&format!("{STEP_MARKER}{name} rc=0")));
        }
        lines.push(SerialLine::parse("FLAKYHBA-STEP sg_vpd-sn rc=0"));
        lines.push(SerialLine::parse(result));
        lines
    }

    #[test]
    fn step_lines_parse_even_behind_kernel_output() {
        assert_eq!(
            StepResult::parse("FLAKYHBA-STEP sg_vpd-b0 rc=5"),
            Some(StepResult {
                name: "sg_vpd-b0".into(),
                rc: 5
            })
        );
        assert_eq!(
            StepResult::parse("[ 3.1] random: crng init doneFLAKYHBA-STEP fio rc=0")
                .map(|s| s.name),
            Some("fio".into())
        );
        assert_eq!(StepResult::parse("FLAKYHBA-STEP fio"), None);
        assert_eq!(StepResult::parse("FLAKYHBA-STEP fio rc=x"), None);
        assert_eq!(StepResult::parse("+ fio --name=verify"), None);
    }

    #[test]
    fn a_complete_passing_run_is_judged_pass() {
        let e = expect(4);
        let verdict = judge_linux(&transcript(&e, PASS_RESULT), Some(0), &e).unwrap();
        assert_eq!(verdict.kernel, "6.1.0-56-amd64");
        assert_eq!((verdict.hw_queues, verdict.queues_used), (4, 4));
        assert_eq!(verdict.steps.len(), e.required_steps().len() + 1);
    }

    #[test]
    fn any_failed_step_fails_even_when_the_guest_says_pass() {
        let e = expect(4);
        let mut lines = transcript(&e, PASS_RESULT);
        lines.insert(3, SerialLine::parse("FLAKYHBA-STEP sg_vpd-b2 rc=5"));
        assert_eq!(
            judge_linux(&lines, Some(0), &e),
            Err(LinuxJudgeError::Steps {
                failed: vec![StepResult {
                    name: "sg_vpd-b2".into(),
                    rc: 5
                }],
                missing: vec![],
            })
        );
    }

    #[test]
    fn a_required_step_that_never_ran_fails() {
        let e = LinuxExpectation {
            held_read: true,
            scsi_timeout_s: Some(5),
            ..expect(4)
        };
        let lines: Vec<SerialLine> = transcript(&e, PASS_RESULT)
            .into_iter()
            .filter(|l| !matches!(l, SerialLine::Log(t) if t.contains("held-read")))
            .collect();
        let err = judge_linux(&lines, Some(0), &e).unwrap_err();
        assert_eq!(
            err,
            LinuxJudgeError::Steps {
                failed: vec![],
                missing: vec!["held-read".into()]
            }
        );
        assert_eq!(err.to_string(), "steps failed: ; never ran: held-read");
    }

    #[test]
    fn result_queues_and_exit_code_are_checked() {
        let e = expect(4);
        let no_result: Vec<SerialLine> = transcript(&e, PASS_RESULT)
            .into_iter()
            .filter(|l| l.result().is_none())
            .collect();
        assert_eq!(
            judge_linux(&no_result, Some(0), &e),
            Err(LinuxJudgeError::NoResultLine)
        );
        let guest_fail = PASS_RESULT.replace(r#""result":"pass""#, r#""result":"fail""#);
        assert!(matches!(
            judge_linux(&transcript(&e, &guest_fail), Some(0), &e),
            Err(LinuxJudgeError::GuestFailed { .. })
        ));
        let one_queue_used = PASS_RESULT.replace(r#""queues_used":4"#, r#""queues_used":1"#);
        assert_eq!(
            judge_linux(&transcript(&e, &one_queue_used), Some(0), &e),
            Err(LinuxJudgeError::Queues {
                asked: 4,
                hw: 4,
                used: 1
            })
        );
        assert_eq!(
            judge_linux(&transcript(&e, PASS_RESULT), Some(1), &e),
            Err(LinuxJudgeError::QemuExit(Some(1)))
        );
    }

    #[test]
    fn the_hotplug_run_has_its_own_steps_and_switches() {
        let e = LinuxExpectation {
            hotplug: true,
            ..expect(4)
        };
        assert_eq!(
            e.kernel_command_line(),
            "console=ttyS0 panic=-1 flakyhba.queues=4 flakyhba.hotadd=32768 flakyhba.resize=589824"
        );
        let steps = e.required_steps();
        for step in [
            "find-disk",
            "hot-add",
            "hot-remove",
            "resize",
            "resize-io",
            "dmesg",
        ] {
            assert!(steps.contains(&step), "{step}");
        }
        assert!(!steps.contains(&"mkfs") && !steps.contains(&"fio"));
        assert!(judge_linux(&transcript(&e, PASS_RESULT), Some(0), &e).is_ok());
        let lines: Vec<SerialLine> = transcript(&e, PASS_RESULT)
            .into_iter()
            .filter(|l| !matches!(l, SerialLine::Log(t) if t.contains("hot-remove")))
            .collect();
        assert_eq!(
            judge_linux(&lines, Some(0), &e),
            Err(LinuxJudgeError::Steps {
                failed: vec![],
                missing: vec!["hot-remove".into()]
            })
        );
    }

    #[test]
    fn command_line_carries_the_switches() {
        assert_eq!(
            expect(1).kernel_command_line(),
            "console=ttyS0 panic=-1 flakyhba.queues=1"
        );
        let opts = LinuxOptions {
            queues: 4,
            scsi_timeout_s: None,
            held_read: true,
            hotplug: false,
            backend: "b".into(),
            guest_dir: "g".into(),
            qemu: "q".into(),
            timeout: Duration::from_secs(1),
            keep: None,
            build_command: String::new(),
        };
        let e = opts.expectation();
        assert_eq!(
            e.kernel_command_line(),
            "console=ttyS0 panic=-1 flakyhba.queues=4 flakyhba.timeout=5 flakyhba.hold=409600"
        );
        assert_eq!(
            e.backend_fault().as_deref(),
            Some("lose:direction=read,lba=409600..409727,once=true")
        );
        assert_eq!(expect(1).backend_fault(), None);
        assert!(e.required_steps().contains(&"timeout"));
        assert!(e.required_steps().contains(&"reset-answered"));
    }
}
