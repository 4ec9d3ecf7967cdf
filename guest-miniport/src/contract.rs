//! The contract between the harness and the guest image, written down once.
//!
//! - harness → guest: the kernel command line, parsed by [`GuestArgs::parse`] and
//!   produced by [`GuestArgs`]'s `Display`.
//! - guest → harness: serial lines that are each one JSON object ([`REPORT_RESULT_KEY`]
//!   marks the last one), and the isa-debug-exit code ([`EXIT_PASS`], [`EXIT_FAIL`]).
//! - the data the workloads write: [`fill_pattern`] at the LBAs of [`smoke_lba`],
//!   so the harness can check the image file on its own after the guest exits.
//!
//! The harness depends on this crate for exactly these items, so both sides are built
//! from the same code and tested against it.

use core::fmt;

pub use crate::platform::MAX_CPUS;

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
/// - `result`: `"pass"` or `"fail"`; `reason`: a plain message when it failed, and
///   `failure` (its kind), `failed_op`, `failed_srb_status`, `failed_scsi_status`,
///   `failed_sense_key` (what is known of it).
/// - `scenario` (the workload's name), `seed`, `irq`, `poll` (bools): echo of the
///   arguments.
/// - `block_size`, `capacity` (blocks): what READ CAPACITY returned.
/// - `lbas`: the LBAs written with [`fill_pattern`] (and acknowledged), in order.
/// - `elapsed_us`: microseconds from guest entry to this line.
/// - `first_request_us`: guest time of the first HwStartIo, to line the guest's times
///   up with the backend trace (whose first `request` record is the same request).
/// - `completed_by_interrupt`, `completed_by_poll`: how the miniport found completions;
///   `polled_ids`: the virtio request ids (the trace's `id`) of the first
///   [`MAX_REPORTED_IDS`] found by the HwTimer poll.
/// - `violations`: how many rule violations the port's checker recorded (0 to pass);
///   `violation_list`: the first of them, each `{"rule","routine","time_us","message",
///   "value"}` (rule ids of docs/miniport-rules.md).
/// - `hw_interrupt_max_us`, `hw_interrupt_total_us`, `hw_timer_max_us`,
///   `hw_timer_total_us`, `hw_start_io_max_us`, `hw_start_io_total_us`, `stall_max_us`:
///   time measured in the miniport's routines (P4).
/// - Counters of the port, the miniport and the workload: see the constants below.
pub mod result_fields {
    pub const RESULT: &str = "result";
    pub const REASON: &str = "reason";
    /// When it failed: what kind of failure (`Failure::kind` of the runner: `command`,
    /// `timeout`, `mismatch`, `short-transfer`, ...), and for a command the operation,
    /// its SRB status, SCSI status and sense key (when it has sense data).
    pub const FAILURE: &str = "failure";
    pub const FAILED_OP: &str = "failed_op";
    pub const FAILED_SRB_STATUS: &str = "failed_srb_status";
    pub const FAILED_SCSI_STATUS: &str = "failed_scsi_status";
    pub const FAILED_SENSE_KEY: &str = "failed_sense_key";
    /// The planted bug the run had (`bug=`), when one was set.
    pub const BUG: &str = "bug";
    pub const SCENARIO: &str = "scenario";
    pub const SEED: &str = "seed";
    pub const IRQ: &str = "irq";
    pub const POLL: &str = "poll";
    pub const BLOCK_SIZE: &str = "block_size";
    pub const CAPACITY: &str = "capacity";
    pub const LBAS: &str = "lbas";
    pub const ELAPSED_US: &str = "elapsed_us";
    pub const FIRST_REQUEST_US: &str = "first_request_us";
    pub const COMPLETED_BY_INTERRUPT: &str = "completed_by_interrupt";
    pub const COMPLETED_BY_POLL: &str = "completed_by_poll";
    pub const POLLED_IDS: &str = "polled_ids";
    pub const STALE_COMPLETIONS: &str = "stale_completions";
    pub const INTERRUPTS: &str = "interrupts";
    pub const INTERRUPTS_NOT_CLAIMED: &str = "interrupts_not_claimed";
    /// Port: HwEnableInterruptsCallback and HwDisableInterruptsCallback calls, on
    /// every CPU (I3, I4). Miniport (`deferred=on`): completions the disable callback's
    /// second look at the used ring found, which arrived while interrupts were masked.
    pub const ENABLE_CALLBACKS: &str = "enable_callbacks";
    pub const DISABLE_CALLBACKS: &str = "disable_callbacks";
    pub const COMPLETED_AFTER_UNMASK: &str = "completed_after_unmask";
    pub const TIMER_CALLS: &str = "timer_calls";
    pub const NOTIFICATIONS: &str = "notifications";
    /// Port: SRBs past their timeout (P1), bus resets, SRBs retried after a bus reset,
    /// SRBs taken back at the end of a reset hold (P2).
    pub const SRB_TIMEOUTS: &str = "srb_timeouts";
    pub const BUS_RESETS: &str = "bus_resets";
    pub const BUS_RESET_RETRIES: &str = "bus_reset_retries";
    pub const RECLAIMED: &str = "reclaimed";
    pub const RESETS_DETECTED: &str = "resets_detected";
    /// Miniport: TMFs sent, answered with FUNCTION COMPLETE/SUCCEEDED, answered with a
    /// failure, not answered within the bound; virtio device resets; the longest and
    /// total time from HwResetBus to the end of the reset.
    pub const TMFS_SENT: &str = "tmfs_sent";
    pub const TMFS_COMPLETED: &str = "tmfs_completed";
    pub const TMFS_FAILED: &str = "tmfs_failed";
    pub const TMF_TIMEOUTS: &str = "tmf_timeouts";
    pub const DEVICE_RESETS: &str = "device_resets";
    pub const RESET_MAX_US: &str = "reset_max_us";
    pub const RESET_TOTAL_US: &str = "reset_total_us";
    /// Miniport: event queue.
    pub const EVENTS: &str = "events";
    pub const EVENTS_MISSED: &str = "events_missed";
    pub const TRANSPORT_RESETS: &str = "transport_resets";
    pub const PARAM_CHANGES: &str = "param_changes";
    pub const CONFIG_CHANGES: &str = "config_changes";
    /// Workload (the class driver's part): retries by cause, reads that failed with
    /// MEDIUM ERROR and their LBAs, bus rescans after a bus change.
    pub const UNIT_ATTENTION_RETRIES: &str = "unit_attention_retries";
    pub const BUSY_RETRIES: &str = "busy_retries";
    pub const QUEUE_FULL_RETRIES: &str = "queue_full_retries";
    pub const MEDIUM_ERRORS: &str = "medium_errors";
    pub const MEDIUM_ERROR_LBAS: &str = "medium_error_lbas";
    pub const RESCANS: &str = "rescans";
    pub const REQUESTS: &str = "requests";
    /// `bench`: completed requests per second and latency (µs) per completion path.
    pub const IOPS: &str = "iops";
    pub const LAT_INTERRUPT_P50_US: &str = "lat_interrupt_p50_us";
    pub const LAT_INTERRUPT_P99_US: &str = "lat_interrupt_p99_us";
    pub const LAT_POLL_P50_US: &str = "lat_poll_p50_us";
    pub const LAT_POLL_P99_US: &str = "lat_poll_p99_us";
    pub const LAT_MAX_US: &str = "lat_max_us";
    pub const VIOLATIONS: &str = "violations";
    pub const VIOLATION_LIST: &str = "violation_list";
    pub const HW_INTERRUPT_MAX_US: &str = "hw_interrupt_max_us";
    pub const HW_INTERRUPT_TOTAL_US: &str = "hw_interrupt_total_us";
    pub const HW_TIMER_MAX_US: &str = "hw_timer_max_us";
    pub const HW_TIMER_TOTAL_US: &str = "hw_timer_total_us";
    pub const HW_START_IO_MAX_US: &str = "hw_start_io_max_us";
    pub const HW_START_IO_TOTAL_US: &str = "hw_start_io_total_us";
    pub const STALL_MAX_US: &str = "stall_max_us";
    pub const CPUS: &str = "cpus";
    /// Per-CPU routine calls: the key is the prefix followed by the CPU's number.
    pub const INTERRUPTS_CPU: &str = "interrupts_cpu";
    pub const TIMER_CALLS_CPU: &str = "timer_calls_cpu";
    pub const START_IO_CALLS_CPU: &str = "start_io_calls_cpu";
    pub const DEFERRED_CALLS_CPU: &str = "deferred_calls_cpu";
    /// Keys of each object in [`VIOLATION_LIST`].
    pub const VIOLATION_RULE: &str = "rule";
    pub const VIOLATION_ROUTINE: &str = "routine";
    pub const VIOLATION_CPU: &str = "cpu";
    pub const VIOLATION_TIME_US: &str = "time_us";
    pub const VIOLATION_MESSAGE: &str = "message";
    pub const VIOLATION_VALUE: &str = "value";

    /// Writes the key of per-CPU field `prefix` for `cpu` (`interrupts_cpu1`).
    pub struct PerCpu(pub &'static str, pub usize);

    impl core::fmt::Display for PerCpu {
        fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
            write!(f, "{}{}", self.0, self.1)
        }
    }

    /// The key of per-CPU field `prefix` for `cpu`.
    pub const fn per_cpu(prefix: &'static str, cpu: usize) -> PerCpu {
        PerCpu(prefix, cpu)
    }
}

/// Most request ids the result line lists in `polled_ids`.
pub const MAX_REPORTED_IDS: usize = 256;

/// The event line, sent just before the result line, that holds the guest's side of a
/// scenario's timeline: `{"event":"timeline","polls":[[t_us,found],...],
/// "resets":[[start_us,end_us],...],"calls":[[t_us,us,routine,cpu],...],
/// "truncated":bool}`. `polls` are HwTimer calls that polled the request queue
/// (`found`: completions they found), `resets` the spans from HwResetBus to the end of
/// the reset (TMF answered, or device re-initialized), `calls` the routine calls whose
/// CPU the routing chooses (`routine` an index into [`timeline_fields::CALL_ROUTINES`],
/// `cpu` the CPU that ran it). Times are guest microseconds
/// ([`result_fields::FIRST_REQUEST_US`] lines them up).
pub mod timeline_fields {
    pub const EVENT: &str = "timeline";
    pub const POLLS: &str = "polls";
    pub const RESETS: &str = "resets";
    pub const CALLS: &str = "calls";
    pub const TRUNCATED: &str = "truncated";
    /// The routines of `calls`, by index.
    pub const CALL_ROUTINES: [&str; 5] = [
        "HwInterrupt",
        "HwTimer",
        "HwResetBus",
        "HwEnableInterruptsCallback",
        "HwDisableInterruptsCallback",
    ];
}

/// Most entries of each list in the timeline line.
pub const MAX_TIMELINE_ENTRIES: usize = 512;

/// The workloads the guest image can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// INQUIRY, READ CAPACITY, write a seeded pattern to `blocks` blocks spread over the
    /// disk, read them back and compare.
    Smoke,
    /// `blocks` distinct seeded random LBAs written at queue depth `qd` in random order,
    /// then read back in another order and compared.
    Io,
    /// `io`, with a bus reset (HwResetBus) from the runner after `reset_after` writes
    /// completed, while requests are outstanding.
    ResetUnderLoad,
    /// `blocks` single-block random reads at queue depth `qd`: IOPS and latency
    /// percentiles per completion path.
    Bench,
}

impl Workload {
    pub const ALL: [Workload; 4] = [
        Workload::Smoke,
        Workload::Io,
        Workload::ResetUnderLoad,
        Workload::Bench,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Workload::Smoke => "smoke",
            Workload::Io => "io",
            Workload::ResetUnderLoad => "reset-under-load",
            Workload::Bench => "bench",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|w| w.name() == name)
    }

    /// Whether the workload writes the pattern at the LBAs it reports.
    pub const fn writes(self) -> bool {
        !matches!(self, Workload::Bench)
    }
}

/// The TMF HwResetBus sends to each LU with requests outstanding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetKind {
    /// VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET.
    Lu,
    /// VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET, once per target.
    Nexus,
}

impl ResetKind {
    pub const fn name(self) -> &'static str {
        match self {
            ResetKind::Lu => "lu",
            ResetKind::Nexus => "nexus",
        }
    }
}

/// Bugs planted on purpose in the miniport and the class driver (`bug=NAME`), so that
/// `flakyhba-harness explore` can show it finds what breaks a miniport. Off by default
/// (`bug=none`): with it off, nothing behaves differently. guest-miniport/README.md says
/// what each one breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PlantedBug {
    None,
    /// The HwTimer watchdog completes what it finds without taking it off the used ring,
    /// and completions are matched by slot alone (no id check, P3): the interrupt later
    /// takes the same entries and completes whatever request holds the slot by then.
    DoubleCompletion,
    /// VIRTIO_SCSI_S_BUSY is completed as an adapter error, not as busy, so the class
    /// driver does not retry it.
    VirtioBusyFatal,
    /// The response codes the decoder does not name (TRANSPORT_FAILURE, TARGET_FAILURE,
    /// NEXUS_FAILURE, FAILURE) fall into a catch-all arm that completes with success.
    UnknownResponseOk,
    /// The residual is ignored: every command reports its whole buffer transferred.
    ResidualIgnored,
    /// The class driver takes MEDIUM ERROR as "unreadable, carry on" without looking at
    /// the direction, so a failed write is counted and dropped.
    WriteErrorIgnored,
    /// The class driver sends BUSY and TASK SET FULL again at once, with no pause, so
    /// the retries run out while the LU is still busy.
    BusyNoBackoff,
    /// HwResetBus waits for the TMF's answer by stalling in a loop (up to the TMF
    /// timeout) instead of returning and letting HwTimer poll for it (S1, P4).
    TmfSpin,
    /// HwTimer polls the used ring and completes what it finds without the interrupt
    /// lock (no SynchronizeAccess), while HwInterrupt may be in the same state on
    /// another CPU (T5). One CPU never runs them at the same time.
    TimerUnlocked,
    /// The TimerArm hand-off without compare-and-exchange: HwStartIo reads the flag when
    /// it starts and sets it when done, asking for HwTimer only if it was clear. A
    /// HwTimer on another CPU that consumed the call in between and found nothing yet
    /// leaves the flag set with no call pending, and polling stops (T6, T7).
    TimerArmNoCas,
    /// With `deferred=on`, HwDisableInterruptsCallback unmasks the request queue's
    /// interrupts without looking at the used ring again: a completion that came after
    /// the enable callback's drain and before the unmask raised no interrupt and waits
    /// for the HwTimer watchdog (or, without it, its SRB timeout).
    DeferredNoRecheck,
}

impl PlantedBug {
    pub const ALL: [PlantedBug; 11] = [
        PlantedBug::None,
        PlantedBug::DoubleCompletion,
        PlantedBug::VirtioBusyFatal,
        PlantedBug::UnknownResponseOk,
        PlantedBug::ResidualIgnored,
        PlantedBug::WriteErrorIgnored,
        PlantedBug::BusyNoBackoff,
        PlantedBug::TmfSpin,
        PlantedBug::TimerUnlocked,
        PlantedBug::TimerArmNoCas,
        PlantedBug::DeferredNoRecheck,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            PlantedBug::None => "none",
            PlantedBug::DoubleCompletion => "double-completion",
            PlantedBug::VirtioBusyFatal => "virtio-busy-fatal",
            PlantedBug::UnknownResponseOk => "unknown-response-ok",
            PlantedBug::ResidualIgnored => "residual-ignored",
            PlantedBug::WriteErrorIgnored => "write-error-ignored",
            PlantedBug::BusyNoBackoff => "busy-no-backoff",
            PlantedBug::TmfSpin => "tmf-spin",
            PlantedBug::TimerUnlocked => "timer-unlocked",
            PlantedBug::TimerArmNoCas => "timer-arm-no-cas",
            PlantedBug::DeferredNoRecheck => "deferred-no-recheck",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|b| b.name() == name)
    }
}

/// Arguments the harness passes on the kernel command line, as `key=value` words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestArgs {
    /// `workload=`.
    pub workload: Workload,
    /// `irq=off`: the miniport requests no interrupts and completes everything from
    /// HwTimer polling.
    pub irq: bool,
    /// `poll=off` (only with `irq=on`): the miniport never arms HwTimer, so it relies on
    /// interrupts alone. The negative control of the fault scenarios.
    pub poll: bool,
    /// Seed of the data pattern and of the LBA choice.
    pub seed: u64,
    /// Blocks the workload writes and reads back (for `bench`: reads).
    pub blocks: u32,
    /// Most requests the workload keeps outstanding at once.
    pub queue_depth: u32,
    /// The port's timer resolution in microseconds (T2). The image programs its
    /// periodic LAPIC tick with it.
    pub tick_us: u32,
    /// HwTimer interval while requests are outstanding and `irq=on`: the watchdog that
    /// finds completions whose interrupt never came (T7).
    pub watchdog_us: u32,
    /// TimeOutValue of every SRB (P1).
    pub srb_timeout_ms: u32,
    /// How long HwResetBus's TMFs may take before the miniport resets the device.
    pub tmf_timeout_ms: u32,
    /// The port's reset hold (P2, N5).
    pub hold_ms: u32,
    /// The TMF of HwResetBus.
    pub reset: ResetKind,
    /// `reset-under-load`: completed writes before the runner resets the bus.
    pub reset_after: u32,
    /// How often the port retries an SRB completed with SRB_STATUS_BUS_RESET.
    pub retries: u32,
    /// Guest time the workload may take before it gives up.
    pub deadline_ms: u32,
    /// `cpus=`: the CPUs the guest runs the port on (QEMU's `-smp`), 1 to [`MAX_CPUS`].
    pub cpus: u32,
    /// The CPU every MSI-X message is addressed to: HwInterrupt and the deferred
    /// callbacks it asks for run there. A CPU the guest does not have means its last.
    pub irq_cpu: u32,
    /// The CPU whose ticks run HwTimer (and the port's timeouts); as `irq_cpu`, the
    /// last CPU when there are fewer. HwStartIo runs on CPU 0, which submits.
    pub timer_cpu: u32,
    /// `deferred=on` (with `irq=on`): HwInterrupt only masks the request queue's
    /// interrupts and asks for CallEnableInterrupts; the deferred callbacks complete
    /// (I3, I4). Off by default.
    pub deferred: bool,
    /// `bug=NAME`: a planted bug ([`PlantedBug`]); `none` by default.
    pub bug: PlantedBug,
}

impl Default for GuestArgs {
    fn default() -> Self {
        GuestArgs {
            workload: Workload::Smoke,
            irq: true,
            poll: true,
            seed: 1,
            blocks: 64,
            queue_depth: 8,
            tick_us: 10_000,
            watchdog_us: 10_000,
            srb_timeout_ms: 10_000,
            tmf_timeout_ms: 2_000,
            hold_ms: 4_000,
            reset: ResetKind::Lu,
            reset_after: 16,
            retries: 4,
            deadline_ms: 60_000,
            cpus: 1,
            irq_cpu: 1,
            timer_cpu: 0,
            deferred: false,
            bug: PlantedBug::None,
        }
    }
}

/// Why a kernel command line was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgError<'a> {
    UnknownKey(&'a str),
    BadValue {
        key: &'a str,
        value: &'a str,
    },
    UnknownWorkload(&'a str),
    UnknownBug(&'a str),
    /// `poll=off` with `irq=off`: nothing would ever complete a request (T7).
    NothingCompletes,
}

impl fmt::Display for ArgError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArgError::UnknownKey(k) => write!(f, "unknown argument {k:?}"),
            ArgError::BadValue { key, value } => write!(f, "bad value {value:?} for {key}"),
            ArgError::UnknownWorkload(s) => write!(f, "unknown workload {s:?}"),
            ArgError::UnknownBug(s) => write!(f, "unknown bug {s:?}"),
            ArgError::NothingCompletes => {
                write!(f, "poll=off needs irq=on: nothing would complete a request")
            }
        }
    }
}

fn parse_num<'a, T: core::str::FromStr>(key: &'a str, value: &'a str) -> Result<T, ArgError<'a>> {
    value.parse().map_err(|_| ArgError::BadValue { key, value })
}

/// A number that must not be 0.
fn parse_positive<'a>(key: &'a str, value: &'a str) -> Result<u32, ArgError<'a>> {
    match parse_num(key, value)? {
        0 => Err(ArgError::BadValue { key, value }),
        n => Ok(n),
    }
}

/// A CPU count (`min` 1) or a CPU number (`min` 0), below or at [`MAX_CPUS`].
fn parse_cpu<'a>(key: &'a str, value: &'a str, min: u32) -> Result<u32, ArgError<'a>> {
    let n: u32 = parse_num(key, value)?;
    if n < min || n as usize > MAX_CPUS - 1 + min as usize {
        return Err(ArgError::BadValue { key, value });
    }
    Ok(n)
}

fn parse_on_off<'a>(key: &'a str, value: &'a str) -> Result<bool, ArgError<'a>> {
    match value {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(ArgError::BadValue { key, value }),
    }
}

const fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

impl GuestArgs {
    /// Parses the kernel command line. Words without `=` are refused, so a typo never
    /// silently runs a different workload.
    pub fn parse(cmdline: &str) -> Result<GuestArgs, ArgError<'_>> {
        let mut a = GuestArgs::default();
        for word in cmdline.split_ascii_whitespace() {
            let (key, value) = word.split_once('=').ok_or(ArgError::UnknownKey(word))?;
            match key {
                "workload" => {
                    a.workload =
                        Workload::from_name(value).ok_or(ArgError::UnknownWorkload(value))?
                }
                "irq" => a.irq = parse_on_off(key, value)?,
                "poll" => a.poll = parse_on_off(key, value)?,
                "seed" => a.seed = parse_num(key, value)?,
                "blocks" => a.blocks = parse_positive(key, value)?,
                "qd" => a.queue_depth = parse_positive(key, value)?,
                "tick_us" => a.tick_us = parse_positive(key, value)?,
                "watchdog_us" => a.watchdog_us = parse_positive(key, value)?,
                "srb_timeout_ms" => a.srb_timeout_ms = parse_positive(key, value)?,
                "tmf_timeout_ms" => a.tmf_timeout_ms = parse_positive(key, value)?,
                "hold_ms" => a.hold_ms = parse_num(key, value)?,
                "reset" => {
                    a.reset = match value {
                        "lu" => ResetKind::Lu,
                        "nexus" => ResetKind::Nexus,
                        _ => return Err(ArgError::BadValue { key, value }),
                    }
                }
                "reset_after" => a.reset_after = parse_num(key, value)?,
                "retries" => a.retries = parse_num(key, value)?,
                "deadline_ms" => a.deadline_ms = parse_positive(key, value)?,
                "cpus" => a.cpus = parse_cpu(key, value, 1)?,
                "irq_cpu" => a.irq_cpu = parse_cpu(key, value, 0)?,
                "timer_cpu" => a.timer_cpu = parse_cpu(key, value, 0)?,
                "deferred" => a.deferred = parse_on_off(key, value)?,
                "bug" => a.bug = PlantedBug::from_name(value).ok_or(ArgError::UnknownBug(value))?,
                _ => return Err(ArgError::UnknownKey(key)),
            }
        }
        if !a.irq && !a.poll {
            return Err(ArgError::NothingCompletes);
        }
        Ok(a)
    }

    /// The CPU that `cpu` (`irq_cpu`, `timer_cpu`) means on a guest with `cpus`: itself,
    /// or the last CPU when the guest has fewer. With one CPU everything runs on CPU 0.
    pub const fn routed_cpu(&self, cpu: u32) -> usize {
        let last = if self.cpus == 0 { 0 } else { self.cpus - 1 };
        (if cpu < last { cpu } else { last }) as usize
    }
}

impl fmt::Display for GuestArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "workload={} irq={} poll={} seed={} blocks={} qd={} tick_us={} watchdog_us={} \
             srb_timeout_ms={} tmf_timeout_ms={} hold_ms={} reset={} reset_after={} \
             retries={} deadline_ms={}",
            self.workload.name(),
            on_off(self.irq),
            on_off(self.poll),
            self.seed,
            self.blocks,
            self.queue_depth,
            self.tick_us,
            self.watchdog_us,
            self.srb_timeout_ms,
            self.tmf_timeout_ms,
            self.hold_ms,
            self.reset.name(),
            self.reset_after,
            self.retries,
            self.deadline_ms,
        )?;
        // Only when they differ from one CPU's defaults, so a one-CPU command line stays
        // as it was before the port ran on several.
        let one = Self::default();
        if (self.cpus, self.irq_cpu, self.timer_cpu) != (one.cpus, one.irq_cpu, one.timer_cpu) {
            write!(
                f,
                " cpus={} irq_cpu={} timer_cpu={}",
                self.cpus, self.irq_cpu, self.timer_cpu
            )?;
        }
        // Only when on, so command lines without it stay as they were.
        if self.deferred {
            write!(f, " deferred=on")?;
        }
        // Only when one is planted, so command lines without one stay as they were.
        if self.bug != PlantedBug::None {
            write!(f, " bug={}", self.bug.name())?;
        }
        Ok(())
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

/// Position `j` of a seeded permutation of `0..count`: the order in which the `io`
/// workload visits its stripes (`seed` differs between the write and the read pass).
/// An affine map `j -> (a*j + b) mod count` with `a` coprime to `count`.
pub fn io_order(seed: u64, count: u32, j: u32) -> u32 {
    let n = u64::from(count.max(1));
    let mut a = (splitmix64(seed) % n) | 1;
    while gcd(a, n) != 1 {
        a += 1;
    }
    let b = splitmix64(seed ^ 0x5eed) % n;
    ((a * (u64::from(j) % n) + b) % n) as u32
}

const fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        let t = a % b;
        a = b;
        b = t;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::ToString;

    #[test]
    fn args_round_trip_through_the_command_line() {
        let args = GuestArgs {
            workload: Workload::ResetUnderLoad,
            irq: true,
            poll: false,
            seed: 42,
            blocks: 16,
            queue_depth: 4,
            tick_us: 1000,
            watchdog_us: 5000,
            srb_timeout_ms: 700,
            tmf_timeout_ms: 900,
            hold_ms: 0,
            reset: ResetKind::Nexus,
            reset_after: 3,
            retries: 2,
            deadline_ms: 5000,
            cpus: 2,
            irq_cpu: 0,
            timer_cpu: 1,
            deferred: false,
            bug: PlantedBug::None,
        };
        let line = args.to_string();
        assert_eq!(GuestArgs::parse(&line), Ok(args));
        assert!(!line.contains("bug="), "{line}");
        assert!(!line.contains("deferred="), "{line}");
        let deferred = GuestArgs {
            deferred: true,
            ..args
        };
        assert!(deferred.to_string().ends_with(" deferred=on"));
        assert_eq!(GuestArgs::parse(&deferred.to_string()), Ok(deferred));
        for bug in PlantedBug::ALL {
            let with = GuestArgs { bug, ..args };
            assert_eq!(GuestArgs::parse(&with.to_string()), Ok(with));
            assert_eq!(PlantedBug::from_name(bug.name()), Some(bug));
        }
        for w in Workload::ALL {
            assert_eq!(Workload::from_name(w.name()), Some(w));
        }
        // One CPU with the default routing writes no CPU keys, as before the port ran
        // on several; any other routing writes all three.
        let one = GuestArgs {
            cpus: 1,
            irq_cpu: 1,
            timer_cpu: 0,
            ..args
        };
        let line = one.to_string();
        assert!(!line.contains("cpu"), "{line}");
        assert_eq!(GuestArgs::parse(&line), Ok(one));
        let odd = GuestArgs { irq_cpu: 0, ..one };
        assert!(odd.to_string().ends_with(" cpus=1 irq_cpu=0 timer_cpu=0"));
        assert_eq!(GuestArgs::parse(&odd.to_string()), Ok(odd));
    }

    #[test]
    fn empty_command_line_gives_defaults() {
        assert_eq!(GuestArgs::parse(""), Ok(GuestArgs::default()));
    }

    #[test]
    fn bad_command_lines_are_refused() {
        let bad = |key, value| Err(ArgError::BadValue { key, value });
        assert_eq!(GuestArgs::parse("irq=maybe"), bad("irq", "maybe"));
        assert_eq!(GuestArgs::parse("poll=1"), bad("poll", "1"));
        assert_eq!(GuestArgs::parse("deferred=yes"), bad("deferred", "yes"));
        assert_eq!(
            GuestArgs::parse("workload=nope"),
            Err(ArgError::UnknownWorkload("nope"))
        );
        assert_eq!(
            GuestArgs::parse("scenario=smoke"),
            Err(ArgError::UnknownKey("scenario"))
        );
        assert_eq!(
            GuestArgs::parse("console=ttyS0"),
            Err(ArgError::UnknownKey("console"))
        );
        assert_eq!(
            GuestArgs::parse("smoke"),
            Err(ArgError::UnknownKey("smoke"))
        );
        for key in [
            "qd",
            "blocks",
            "tick_us",
            "watchdog_us",
            "srb_timeout_ms",
            "tmf_timeout_ms",
            "deadline_ms",
        ] {
            let line = std::format!("{key}=0");
            assert_eq!(GuestArgs::parse(&line), bad(key, "0"), "{key}");
        }
        assert_eq!(GuestArgs::parse("reset=bus"), bad("reset", "bus"));
        assert_eq!(GuestArgs::parse("cpus=0"), bad("cpus", "0"));
        assert_eq!(GuestArgs::parse("cpus=9"), bad("cpus", "9"));
        assert_eq!(GuestArgs::parse("irq_cpu=8"), bad("irq_cpu", "8"));
        assert_eq!(GuestArgs::parse("timer_cpu=-1"), bad("timer_cpu", "-1"));
        assert!(GuestArgs::parse("cpus=8 irq_cpu=7 timer_cpu=0").is_ok());
        assert_eq!(
            GuestArgs::parse("bug=nope"),
            Err(ArgError::UnknownBug("nope"))
        );
        assert_eq!(
            GuestArgs::parse("irq=off poll=off"),
            Err(ArgError::NothingCompletes)
        );
        // A zero hold or no retries are settings, not mistakes.
        assert!(GuestArgs::parse("hold_ms=0 retries=0 reset_after=0").is_ok());
    }

    #[test]
    fn routing_past_the_last_cpu_means_the_last_cpu() {
        let one = GuestArgs::default();
        assert_eq!(
            (one.routed_cpu(one.irq_cpu), one.routed_cpu(one.timer_cpu)),
            (0, 0)
        );
        let two = GuestArgs {
            cpus: 2,
            ..GuestArgs::default()
        };
        assert_eq!(
            (two.routed_cpu(two.irq_cpu), two.routed_cpu(two.timer_cpu)),
            (1, 0)
        );
        assert_eq!(two.routed_cpu(5), 1);
        assert_eq!(
            std::format!(
                "{}",
                result_fields::per_cpu(result_fields::INTERRUPTS_CPU, 1)
            ),
            "interrupts_cpu1"
        );
    }

    #[test]
    fn io_order_is_a_permutation() {
        for count in [1u32, 2, 3, 7, 64, 100, 256] {
            for seed in [0u64, 1, 99] {
                let mut seen = std::vec![false; count as usize];
                for j in 0..count {
                    let i = io_order(seed, count, j) as usize;
                    assert!(!seen[i], "count {count} seed {seed}: {i} twice");
                    seen[i] = true;
                }
            }
        }
        // Different seeds give different orders.
        let a: std::vec::Vec<u32> = (0..64).map(|j| io_order(1, 64, j)).collect();
        let b: std::vec::Vec<u32> = (0..64).map(|j| io_order(2, 64, j)).collect();
        assert_ne!(a, b);
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
