//! The contract between the harness and the guest image, written down once.
//!
//! - harness → guest: the kernel command line, parsed by [`GuestArgs::parse`] and
//!   produced by [`GuestArgs`]'s `Display`.
//! - guest → harness: serial lines that are each one JSON object ([`REPORT_RESULT_KEY`]
//!   marks the last one), and the isa-debug-exit code ([`EXIT_PASS`], [`EXIT_FAIL`]).
//! - the data the `smoke` scenario writes: [`fill_pattern`] at the LBAs of [`smoke_lba`],
//!   so the harness can check the image file on its own after the guest exits.
//!
//! The harness depends on this crate for exactly these items, so both sides are built
//! from the same code and tested against it.

use core::fmt;

/// The I/O port of QEMU's `isa-debug-exit` device (`iobase=0xf4,iosize=0x04`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Written to [`DEBUG_EXIT_PORT`] when the scenario passed. QEMU exits with `(v << 1) | 1`.
pub const EXIT_PASS: u8 = 0x10;
/// Written to [`DEBUG_EXIT_PORT`] when the scenario failed.
pub const EXIT_FAIL: u8 = 0x11;

/// QEMU's exit status for a guest exit code written to isa-debug-exit.
pub const fn qemu_status_for(exit: u8) -> i32 {
    ((exit as i32) << 1) | 1
}

/// Every serial report line is a JSON object. The final one has this key
/// (`{"result":"pass"|"fail", ...}`); event lines have `"event"` instead.
pub const REPORT_RESULT_KEY: &str = "result";
/// Key of event lines: `{"event":"name", ...}`.
pub const REPORT_EVENT_KEY: &str = "event";

/// Fields of the final result line that the harness reads. Other fields may follow.
/// - `result`: `"pass"` or `"fail"`; `reason`: a plain message when it failed.
/// - `scenario`, `seed`, `irq` (bool): echo of the arguments.
/// - `block_size`, `capacity` (blocks): what READ CAPACITY returned.
/// - `lbas`: the LBAs written with [`fill_pattern`], in order.
/// - `elapsed_us`: microseconds from guest entry to this line.
/// - `completed_by_interrupt`, `completed_by_poll`: how the miniport found completions.
/// - `violations`: how many rule violations the port's checker recorded (0 to pass);
///   `violation_list`: the first of them, each `{"rule","routine","time_us","message",
///   "value"}` (rule ids of docs/miniport-rules.md).
/// - `hw_interrupt_max_us`, `hw_interrupt_total_us`, `hw_timer_max_us`,
///   `hw_timer_total_us`, `hw_start_io_max_us`, `hw_start_io_total_us`, `stall_max_us`:
///   time measured in the miniport's routines (P4).
pub mod result_fields {
    pub const RESULT: &str = "result";
    pub const REASON: &str = "reason";
    pub const SCENARIO: &str = "scenario";
    pub const SEED: &str = "seed";
    pub const IRQ: &str = "irq";
    pub const BLOCK_SIZE: &str = "block_size";
    pub const CAPACITY: &str = "capacity";
    pub const LBAS: &str = "lbas";
    pub const ELAPSED_US: &str = "elapsed_us";
    pub const COMPLETED_BY_INTERRUPT: &str = "completed_by_interrupt";
    pub const COMPLETED_BY_POLL: &str = "completed_by_poll";
    pub const VIOLATIONS: &str = "violations";
    pub const VIOLATION_LIST: &str = "violation_list";
    pub const HW_INTERRUPT_MAX_US: &str = "hw_interrupt_max_us";
    pub const HW_INTERRUPT_TOTAL_US: &str = "hw_interrupt_total_us";
    pub const HW_TIMER_MAX_US: &str = "hw_timer_max_us";
    pub const HW_TIMER_TOTAL_US: &str = "hw_timer_total_us";
    pub const HW_START_IO_MAX_US: &str = "hw_start_io_max_us";
    pub const HW_START_IO_TOTAL_US: &str = "hw_start_io_total_us";
    pub const STALL_MAX_US: &str = "stall_max_us";
    /// Keys of each object in [`VIOLATION_LIST`].
    pub const VIOLATION_RULE: &str = "rule";
    pub const VIOLATION_ROUTINE: &str = "routine";
    pub const VIOLATION_TIME_US: &str = "time_us";
    pub const VIOLATION_MESSAGE: &str = "message";
    pub const VIOLATION_VALUE: &str = "value";
}

/// The scenarios the guest image can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// INQUIRY, READ CAPACITY, write a seeded pattern to `blocks` blocks spread over the
    /// disk, read them back and compare.
    Smoke,
}

impl Scenario {
    pub const fn name(self) -> &'static str {
        match self {
            Scenario::Smoke => "smoke",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "smoke" => Some(Scenario::Smoke),
            _ => None,
        }
    }
}

/// Arguments the harness passes on the kernel command line, as `key=value` words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestArgs {
    pub scenario: Scenario,
    /// `irq=off`: the miniport requests no interrupts and completes everything from
    /// HwTimer polling.
    pub irq: bool,
    /// Seed of the data pattern and of the LBA choice.
    pub seed: u64,
    /// Number of blocks the smoke scenario writes and reads back.
    pub blocks: u32,
    /// Most requests the scenario keeps outstanding at once.
    pub queue_depth: u32,
    /// The port's timer resolution in microseconds (T2). The image programs its
    /// periodic LAPIC tick with it.
    pub tick_us: u32,
}

impl Default for GuestArgs {
    fn default() -> Self {
        GuestArgs {
            scenario: Scenario::Smoke,
            irq: true,
            seed: 1,
            blocks: 64,
            queue_depth: 8,
            tick_us: 10_000,
        }
    }
}

/// Why a kernel command line was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgError<'a> {
    UnknownKey(&'a str),
    BadValue { key: &'a str, value: &'a str },
    UnknownScenario(&'a str),
}

impl fmt::Display for ArgError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::UnknownKey(k) => write!(f, "unknown argument {k:?}"),
            ArgError::BadValue { key, value } => write!(f, "bad value {value:?} for {key}"),
            ArgError::UnknownScenario(s) => write!(f, "unknown scenario {s:?}"),
        }
    }
}

fn parse_num<'a, T: core::str::FromStr>(key: &'a str, value: &'a str) -> Result<T, ArgError<'a>> {
    value.parse().map_err(|_| ArgError::BadValue { key, value })
}

impl GuestArgs {
    /// Parses the kernel command line. Words without `=` are refused, so a typo never
    /// silently runs a different scenario.
    pub fn parse(cmdline: &str) -> Result<GuestArgs, ArgError<'_>> {
        let mut args = GuestArgs::default();
        for word in cmdline.split_ascii_whitespace() {
            let (key, value) = word.split_once('=').ok_or(ArgError::UnknownKey(word))?;
            match key {
                "scenario" => {
                    args.scenario =
                        Scenario::from_name(value).ok_or(ArgError::UnknownScenario(value))?
                }
                "irq" => {
                    args.irq = match value {
                        "on" => true,
                        "off" => false,
                        _ => return Err(ArgError::BadValue { key, value }),
                    }
                }
                "seed" => args.seed = parse_num(key, value)?,
                "blocks" => args.blocks = parse_num(key, value)?,
                "qd" => {
                    args.queue_depth = parse_num(key, value)?;
                    if args.queue_depth == 0 {
                        return Err(ArgError::BadValue { key, value });
                    }
                }
                "tick_us" => {
                    args.tick_us = parse_num(key, value)?;
                    if args.tick_us == 0 {
                        return Err(ArgError::BadValue { key, value });
                    }
                }
                _ => return Err(ArgError::UnknownKey(key)),
            }
        }
        Ok(args)
    }
}

impl fmt::Display for GuestArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "scenario={} irq={} seed={} blocks={} qd={} tick_us={}",
            self.scenario.name(),
            if self.irq { "on" } else { "off" },
            self.seed,
            self.blocks,
            self.queue_depth,
            self.tick_us
        )
    }
}

/// SplitMix64: a tiny, well-known mixing function. Both sides need the same bytes, and
/// no_std code cannot share a host RNG crate.
pub const fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Fills `buf`, the contents of block `lba`, with the pattern for `seed`. Every 8-byte
/// word depends on the seed, the LBA and its offset, so a block written to the wrong LBA,
/// a stale block, or a shifted buffer all fail the comparison.
pub fn fill_pattern(seed: u64, lba: u64, buf: &mut [u8]) {
    let base = splitmix64(seed ^ splitmix64(lba));
    for (i, chunk) in buf.chunks_mut(8).enumerate() {
        let word = splitmix64(base.wrapping_add(i as u64)).to_le_bytes();
        chunk.copy_from_slice(&word[..chunk.len()]);
    }
}

/// True when `buf` holds the pattern of `seed` for block `lba`.
pub fn check_pattern(seed: u64, lba: u64, buf: &[u8]) -> bool {
    let base = splitmix64(seed ^ splitmix64(lba));
    buf.chunks(8).enumerate().all(|(i, chunk)| {
        let word = splitmix64(base.wrapping_add(i as u64)).to_le_bytes();
        chunk == &word[..chunk.len()]
    })
}

/// The `index`-th of `count` LBAs the smoke scenario writes on a disk of `capacity`
/// blocks: one per equal stripe of the disk, at a seeded offset inside the stripe, so the
/// blocks are spread over the whole disk and distinct.
pub fn smoke_lba(seed: u64, capacity: u64, count: u32, index: u32) -> u64 {
    let count = u64::from(count.max(1));
    let stripe = (capacity / count).max(1);
    let offset = splitmix64(seed.wrapping_add(u64::from(index))) % stripe;
    (u64::from(index) * stripe + offset).min(capacity.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;

    #[test]
    fn args_round_trip_through_the_command_line() {
        let args = GuestArgs {
            scenario: Scenario::Smoke,
            irq: false,
            seed: 42,
            blocks: 16,
            queue_depth: 4,
            tick_us: 1000,
        };
        let line = args.to_string();
        assert_eq!(GuestArgs::parse(&line), Ok(args));
    }

    #[test]
    fn empty_command_line_gives_defaults() {
        assert_eq!(GuestArgs::parse(""), Ok(GuestArgs::default()));
    }

    #[test]
    fn bad_command_lines_are_refused() {
        assert_eq!(
            GuestArgs::parse("irq=maybe"),
            Err(ArgError::BadValue {
                key: "irq",
                value: "maybe"
            })
        );
        assert_eq!(
            GuestArgs::parse("scenario=nope"),
            Err(ArgError::UnknownScenario("nope"))
        );
        assert_eq!(
            GuestArgs::parse("console=ttyS0"),
            Err(ArgError::UnknownKey("console"))
        );
        assert_eq!(
            GuestArgs::parse("smoke"),
            Err(ArgError::UnknownKey("smoke"))
        );
        assert_eq!(
            GuestArgs::parse("qd=0"),
            Err(ArgError::BadValue {
                key: "qd",
                value: "0"
            })
        );
    }

    #[test]
    fn pattern_depends_on_seed_lba_and_offset() {
        let mut a = [0u8; 512];
        fill_pattern(7, 100, &mut a);
        assert!(check_pattern(7, 100, &a));
        assert!(!check_pattern(8, 100, &a));
        assert!(!check_pattern(7, 101, &a));
        let mut shifted = [0u8; 512];
        shifted[8..].copy_from_slice(&a[..504]);
        assert!(!check_pattern(7, 100, &shifted));
        assert!(!check_pattern(7, 100, &[0u8; 512]));
    }

    #[test]
    fn smoke_lbas_are_distinct_spread_and_in_range() {
        let capacity = 131_072;
        let lbas: std::vec::Vec<u64> = (0..64).map(|i| smoke_lba(3, capacity, 64, i)).collect();
        assert!(lbas.windows(2).all(|w| w[0] < w[1]), "{lbas:?}");
        assert!(*lbas.last().unwrap() < capacity);
        assert!(*lbas.last().unwrap() >= capacity / 64 * 63);
        // More blocks than the disk has still stays in range.
        assert!((0..10).all(|i| smoke_lba(1, 4, 10, i) < 4));
    }

    #[test]
    fn exit_status_matches_isa_debug_exit() {
        assert_eq!(qemu_status_for(EXIT_PASS), 33);
        assert_eq!(qemu_status_for(EXIT_FAIL), 35);
    }
}
