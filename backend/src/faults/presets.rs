//! Named presets (`--fault-preset NAME`). Each is an ordinary plan text, so presets go
//! through the same parser and validation as plan files.

/// The names [`preset_toml`] knows, for help texts and error messages.
pub const PRESET_NAMES: &[&str] = &[
    "flaky-irq",
    "slow-reset",
    "hung-reset",
    "lossy",
    "latency",
    "error-storm",
];

/// The plan text of a preset.
pub fn preset_toml(name: &str) -> Option<&'static str> {
    Some(match name {
        // Completions whose interrupt never comes, plus interrupts with nothing new:
        // a miniport must poll from HwTimer (T7) and check its own state (I1).
        "flaky-irq" => {
            r#"
seed = 1

[[fault]]
name = "lost interrupts"
kind = "drop-interrupt"
queue = "request"
probability = 0.2

[[fault]]
name = "spurious interrupts"
kind = "spurious-interrupt"
queue = "request"
interval_ms = 50
burst = 2
"#
        }
        // Resets that take seconds: a miniport must not stall (S1) but poll the TMF.
        "slow-reset" => {
            r#"
seed = 2

[[fault]]
name = "slow LU reset"
kind = "slow-tmf"
tmf = "lu-reset"
duration_ms = 3000
new_commands = "busy"

[[fault]]
name = "slow nexus reset"
kind = "slow-tmf"
tmf = "i-t-nexus-reset"
duration_ms = 3000
new_commands = "hold"

[[fault]]
name = "slow abort"
kind = "slow-tmf"
tmf = "abort-task"
duration_ms = 1000
"#
        }
        // Resets that never answer: only a device reset gets the HBA back.
        "hung-reset" => {
            r#"
seed = 3

[[fault]]
name = "hung LU reset"
kind = "hang-tmf"
tmf = "lu-reset"

[[fault]]
name = "hung nexus reset"
kind = "hang-tmf"
tmf = "i-t-nexus-reset"
"#
        }
        // Reads and writes that never complete, until an abort or reset (P1).
        "lossy" => {
            r#"
seed = 4

[[fault]]
name = "lost reads"
kind = "lose"
opcode = "read-10"
probability = 0.05

[[fault]]
name = "lost writes"
kind = "lose"
opcode = "write-10"
probability = 0.05
"#
        }
        // Long-tailed latency on every request queue command.
        "latency" => {
            r#"
seed = 5

[[fault]]
name = "long tail"
kind = "delay"
queue = "request"
request = "command"
distribution = "long-tail"
min_ms = 1
max_ms = 2000
alpha = 1.2
"#
        }
        // Error statuses a miniport must retry or report, and a rescan event.
        "error-storm" => {
            r#"
seed = 6

[[fault]]
name = "unit attention"
kind = "status"
status = "check-condition"
sense_key = 0x6
asc = 0x29
ascq = 0x00
once = true

[[fault]]
name = "busy"
kind = "status"
status = "busy"
every = 7

[[fault]]
name = "task set full"
kind = "status"
status = "task-set-full"
every = 11

[[fault]]
name = "transport failure"
kind = "status"
status = "transport-failure"
probability = 0.01

[[fault]]
name = "rescan"
kind = "event"
event = "transport-reset"
reason = "rescan"
at_ms = 2000
"#
        }
        _ => return None,
    })
}
