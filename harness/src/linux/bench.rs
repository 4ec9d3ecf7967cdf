//! `flakyhba-harness bench-linux` (`make bench-linux`): the stock Linux guest runs the same
//! fio jobs against our backend (`vhost-user-scsi-pci`) and against QEMU's built-in
//! virtio-scsi (`virtio-scsi-pci` with a `scsi-hd` on the same image file, `cache=none,
//! aio=native`), one boot per device and round, in one run. The guest's /init
//! (`flakyhba.bench=S`) prints fio's JSON on the serial port; the table compares IOPS,
//! bandwidth and latency percentiles, ours / QEMU's. Under TCG the guest's CPU bounds
//! both figures, so the ratio says how much each device costs the guest, not what the
//! backend can do (`make bench` measures that).

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::fio::{judge_bench, FioFigures, JOBS};
use super::{check_inputs, linux_guest, LinuxOptions, ACCEL, GUEST};
use crate::launch::boot::{backend_command, Boot, End, RunError, RunFailure};
use crate::launch::qemu::{self, option_value, QemuConfig};
use crate::launch::rundir::{prepare_image, RunDir};
use crate::launch::serial::SerialError;
use crate::launch::signals;

/// The image both devices serve: filled with data, so reads hit allocated blocks.
pub const IMAGE_BYTES: u64 = 256 * 1024 * 1024;
/// The built-in device's drive options, as the comparison is usually quoted.
pub const QEMU_DRIVE_OPTIONS: &str = "format=raw,cache=none,aio=native";

/// The device the guest's disk is on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Device {
    /// Our backend behind QEMU's vhost-user-scsi-pci.
    Ours,
    /// QEMU's own virtio-scsi-pci and scsi-hd.
    QemuVirtioScsi,
}

impl Device {
    pub fn label(self) -> &'static str {
        match self {
            Device::Ours => "ours",
            Device::QemuVirtioScsi => "qemu virtio-scsi",
        }
    }

    fn log_name(self) -> &'static str {
        match self {
            Device::Ours => "ours",
            Device::QemuVirtioScsi => "qemu-builtin",
        }
    }
}

#[derive(Clone, Debug)]
pub struct LinuxBenchOptions {
    pub queues: u16,
    /// Seconds of each fio job (after a 2 s ramp).
    pub runtime_s: u32,
    /// Boots per device; the devices alternate.
    pub repeats: u32,
    pub backend: PathBuf,
    pub guest_dir: PathBuf,
    pub qemu: PathBuf,
    /// `-drive` options of QEMU's own device ([`QEMU_DRIVE_OPTIONS`]).
    pub qemu_drive: String,
    /// Deadline of each boot.
    pub boot_timeout: Duration,
    pub keep: Option<PathBuf>,
    pub build_command: String,
}

/// One fio job of one boot.
#[derive(Clone, Debug, Serialize)]
pub struct JobRun {
    pub device: Device,
    pub round: u32,
    pub job: String,
    pub figures: FioFigures,
}

/// The median of a job on a device over the rounds, with min and max (IOPS).
#[derive(Clone, Debug, Serialize)]
pub struct JobSummary {
    pub job: String,
    pub device: Device,
    pub iops_median: f64,
    pub iops_min: f64,
    pub iops_max: f64,
    /// The run closest to the median.
    pub median_run: FioFigures,
}

/// Ours / QEMU's for one job.
#[derive(Clone, Debug, Serialize)]
pub struct JobRatio {
    pub job: String,
    /// Median over the rounds of the IOPS ratio of the round's two boots.
    pub iops: f64,
    pub min: f64,
    pub max: f64,
    /// QEMU's median latency over ours (above 1: ours is faster).
    pub lat_mean_qemu_over_ours: f64,
    pub target: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LinuxBenchReport {
    pub kernel: String,
    pub accel: String,
    pub queues: u16,
    pub runtime_s: u32,
    pub repeats: u32,
    pub image_bytes: u64,
    pub qemu_drive: String,
    pub runs: Vec<JobRun>,
    /// Boots that failed (hung ones included), left out of `runs` and the figures.
    pub failures: Vec<BootFailure>,
    pub summary: Vec<JobSummary>,
    pub ratios: Vec<JobRatio>,
    pub wall_s: f64,
}

impl LinuxBenchReport {
    /// How many boots on `device` failed.
    pub fn failures_of(&self, device: Device) -> usize {
        self.failures.iter().filter(|f| f.device == device).count()
    }
}

/// The kernel command line of a bench boot.
pub fn kernel_command_line(queues: u16, runtime_s: u32) -> String {
    format!(
        "console=ttyS0 panic=-1 quiet flakyhba.queues={queues} flakyhba.bench={runtime_s} flakyhba.bench_jobs={}",
        JOBS.join(",")
    )
}

/// The vhost-user command line with the vhost-user-scsi device (and its chardev) replaced
/// by QEMU's own virtio-scsi controller and a scsi-hd on `image` (`-drive` with
/// `drive_options`): everything else (machine,
/// memory, CPUs, kernel, console) stays the same. `None` if the vhost-user device is not
/// in `args`.
pub fn builtin_args(
    args: &[OsString],
    image: &Path,
    drive_options: &str,
    queues: u16,
) -> Option<Vec<OsString>> {
    let mut out = Vec::with_capacity(args.len() + 4);
    let mut replaced = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let value = |v: Option<&OsString>| v.map(|v| v.to_string_lossy().into_owned());
        match a.to_str() {
            Some("-chardev") => {
                let v = it.next();
                if !value(v).is_some_and(|v| v.starts_with("socket,id=vus,")) {
                    out.push(a.clone());
                    out.extend(v.cloned());
                }
            }
            Some("-device") => {
                let v = it.next();
                if value(v).is_some_and(|v| v.starts_with("vhost-user-scsi-pci,")) {
                    let mut drive = OsString::from("if=none,id=d0,file=");
                    drive.push(option_value(image));
                    drive.push(format!(",{drive_options}"));
                    out.extend([
                        "-device".into(),
                        format!("virtio-scsi-pci,id=scsi0,num_queues={queues}").into(),
                        "-drive".into(),
                        drive,
                        "-device".into(),
                        "scsi-hd,drive=d0,bus=scsi0.0".into(),
                    ]);
                    replaced = true;
                } else {
                    out.push(a.clone());
                    out.extend(v.cloned());
                }
            }
            _ => out.push(a.clone()),
        }
    }
    replaced.then_some(out)
}

/// What a boot needs besides the options.
struct Inputs {
    kernel: PathBuf,
    initrd: PathBuf,
    qemu: PathBuf,
    image: PathBuf,
}

/// Boots the guest once on `device` and returns its jobs' figures and kernel.
fn boot(
    b: &mut Boot,
    opts: &LinuxBenchOptions,
    inputs: &Inputs,
    dir: &RunDir,
    device: Device,
    round: u32,
) -> Result<(String, Vec<(String, FioFigures)>), RunError> {
    let start = Instant::now();
    let deadline = start + opts.boot_timeout;
    let name = |what: &str| format!("{}-{}-{what}", device.log_name(), round + 1);
    let socket = dir.socket_path()?;
    let guest = linux_guest(
        inputs.kernel.clone(),
        inputs.initrd.clone(),
        kernel_command_line(opts.queues, opts.runtime_s),
        opts.queues,
    );
    let config = QemuConfig::new(inputs.qemu.clone(), socket.clone(), guest, ACCEL);
    let args = match device {
        Device::Ours => {
            let _ = std::fs::remove_file(&socket);
            let mut command = backend_command(&opts.backend, &socket, [&inputs.image]);
            command.arg("--num-queues").arg(opts.queues.to_string());
            b.start_backend(command, &dir.log_path(&name("backend")), &socket, deadline)?;
            config.args()
        }
        Device::QemuVirtioScsi => {
            builtin_args(&config.args(), &inputs.image, &opts.qemu_drive, opts.queues)
                .expect("QemuConfig::args has the vhost-user-scsi device")
        }
    };
    let mut command = Command::new(&config.qemu);
    command.args(&args);
    eprintln!(
        "bench-linux: round {} {}: {}",
        round + 1,
        device.label(),
        qemu::command_line(&command)
    );
    b.start_qemu(
        command,
        &dir.log_path(&name("serial")),
        &dir.log_path(&name("qemu")),
    )?;
    let exit = b.wait_guest(deadline, End::Strict)?;
    let _ = std::fs::remove_file(&socket);
    judge_bench(b.lines(), exit.code()).map_err(RunError::fail)
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn summarize(runs: &[JobRun]) -> (Vec<JobSummary>, Vec<JobRatio>) {
    let mut summary = Vec::new();
    for job in JOBS {
        for device in [Device::Ours, Device::QemuVirtioScsi] {
            let these: Vec<&JobRun> = runs
                .iter()
                .filter(|r| r.job == *job && r.device == device)
                .collect();
            let mut iops: Vec<f64> = these.iter().map(|r| r.figures.iops).collect();
            iops.sort_by(f64::total_cmp);
            let Some(mid) = these.iter().min_by(|a, b| {
                let m = median(&iops);
                (a.figures.iops - m)
                    .abs()
                    .total_cmp(&(b.figures.iops - m).abs())
            }) else {
                continue;
            };
            summary.push(JobSummary {
                job: (*job).to_owned(),
                device,
                iops_median: median(&iops),
                iops_min: iops[0],
                iops_max: iops[iops.len() - 1],
                median_run: mid.figures.clone(),
            });
        }
    }
    let mut ratios = Vec::new();
    for job in JOBS {
        let of = |device| {
            runs.iter()
                .filter(move |r| r.job == *job && r.device == device)
                .map(|r| (r.round, &r.figures))
        };
        let mut paired: Vec<f64> = of(Device::Ours)
            .filter_map(|(round, o)| {
                of(Device::QemuVirtioScsi)
                    .find(|(r, _)| *r == round)
                    .map(|(_, q)| o.iops / q.iops)
            })
            .filter(|r| r.is_finite())
            .collect();
        paired.sort_by(f64::total_cmp);
        let find = |device| summary.iter().find(|s| s.job == *job && s.device == device);
        let (Some(ours), Some(qemu)) = (find(Device::Ours), find(Device::QemuVirtioScsi)) else {
            continue;
        };
        if paired.is_empty() {
            continue;
        }
        ratios.push(JobRatio {
            job: (*job).to_owned(),
            iops: median(&paired),
            min: paired[0],
            max: paired[paired.len() - 1],
            lat_mean_qemu_over_ours: qemu.median_run.lat_mean_us
                / ours.median_run.lat_mean_us.max(1e-9),
            target: (*job == "randread").then(|| ">= 1.0".to_owned()),
        });
    }
    (summary, ratios)
}

/// Runs every round: our backend, then QEMU's device, on the same image.
pub fn run_linux_bench(opts: &LinuxBenchOptions) -> Result<LinuxBenchReport, Box<RunFailure>> {
    let start = Instant::now();
    let early = |error: RunError| Box::new(RunFailure::new(error).with_wall(start.elapsed()));
    let check = LinuxOptions {
        queues: opts.queues,
        scsi_timeout_s: None,
        held_read: false,
        hotplug: false,
        backend: opts.backend.clone(),
        guest_dir: opts.guest_dir.clone(),
        qemu: opts.qemu.clone(),
        timeout: opts.boot_timeout,
        keep: opts.keep.clone(),
        build_command: opts.build_command.clone(),
    };
    let (kernel, initrd, qemu) = check_inputs(&check).map_err(early)?;
    let dir = RunDir::kept_or_temporary(opts.keep.as_deref()).map_err(|e| early(e.into()))?;
    let image = dir.path().join("bench.img");
    prepare_image(&image, IMAGE_BYTES).map_err(|e| early(e.into()))?;
    let inputs = Inputs {
        kernel,
        initrd,
        qemu,
        image,
    };
    let rounds = run_rounds(opts.repeats, |device, round| {
        let mut b = Boot::new(GUEST);
        let boot_start = Instant::now();
        let (kernel, figures) = boot(&mut b, opts, &inputs, &dir, device, round)
            .map_err(|e| Box::new(b.failure(e, &dir).with_wall(boot_start.elapsed())))?;
        for (job, f) in &figures {
            eprintln!(
                "bench-linux: round {} {} {job}: {:.0} IOPS, {:.1} MiB/s, lat mean {:.0} us, clat p50 {:.0} us, p99 {:.0} us (boot {:.0} s)",
                round + 1,
                device.label(),
                f.iops,
                f.mib_s,
                f.lat_mean_us,
                f.clat_p50_us,
                f.clat_p99_us,
                boot_start.elapsed().as_secs_f64()
            );
        }
        Ok((kernel, figures))
    })
    .map_err(|failure| Box::new((*failure).with_wall(start.elapsed())))?;
    let Rounds {
        kernel: guest_kernel,
        runs,
        failures,
    } = rounds;
    let (summary, ratios) = summarize(&runs);
    Ok(LinuxBenchReport {
        kernel: guest_kernel,
        accel: ACCEL.to_string(),
        queues: opts.queues,
        runtime_s: opts.runtime_s,
        repeats: opts.repeats,
        image_bytes: IMAGE_BYTES,
        qemu_drive: format!(
            "virtio-scsi-pci,num_queues={} + scsi-hd, -drive {}",
            opts.queues, opts.qemu_drive
        ),
        runs,
        failures,
        summary,
        ratios,
        wall_s: start.elapsed().as_secs_f64(),
    })
}

/// What the rounds left: the jobs of the boots that passed and the boots that failed.
#[derive(Debug, Default)]
struct Rounds {
    kernel: String,
    runs: Vec<JobRun>,
    failures: Vec<BootFailure>,
}

/// Boots each device once per round, in turn. A boot that fails, hung ones included, is
/// reported, left out of the figures (the ratios pair the rounds where both passed) and
/// the rounds go on; an interruption ends them.
fn run_rounds(
    repeats: u32,
    mut boot_once: impl FnMut(Device, u32) -> BootResult,
) -> Result<Rounds, Box<RunFailure>> {
    let mut rounds = Rounds::default();
    for round in 0..repeats {
        for device in [Device::Ours, Device::QemuVirtioScsi] {
            match boot_once(device, round) {
                Ok((kernel, figures)) => {
                    rounds.kernel = kernel;
                    rounds
                        .runs
                        .extend(figures.into_iter().map(|(job, figures)| JobRun {
                            device,
                            round,
                            job,
                            figures,
                        }));
                }
                Err(failure) if failure.interrupted() => return Err(failure),
                Err(failure) => {
                    let f = BootFailure::new(device, round, &failure);
                    eprintln!(
                        "bench-linux: round {} {}: FAILED{}, left out: {}\n{}",
                        round + 1,
                        device.label(),
                        if f.hung { " (hung)" } else { "" },
                        f.error,
                        tail(&failure.serial, 12)
                    );
                    rounds.failures.push(f);
                }
            }
            if signals::interrupted() {
                return Err(Box::new(RunFailure::new(RunError::Interrupted)));
            }
        }
    }
    Ok(rounds)
}

/// One boot: the guest's kernel and each job's figures, or why it failed.
type BootResult = Result<(String, Vec<(String, FioFigures)>), Box<RunFailure>>;

/// A boot that failed: it is in no figure.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BootFailure {
    pub device: Device,
    pub round: u32,
    /// No result line by the boot's deadline: the guest stopped making progress.
    pub hung: bool,
    pub error: String,
}

impl BootFailure {
    fn new(device: Device, round: u32, failure: &RunFailure) -> BootFailure {
        BootFailure {
            device,
            round,
            hung: matches!(
                failure.error,
                RunError::NoResult {
                    source: SerialError::TimedOut(_),
                    ..
                }
            ),
            error: failure.error.to_string(),
        }
    }
}

/// The last `n` lines of `text`, each cut at 160 characters (fio's JSON is one line).
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|l| match l.char_indices().nth(160) {
            Some((at, _)) => format!("{}...", &l[..at]),
            None => (*l).to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// The terminal table.
pub fn render_table(r: &LinuxBenchReport) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Linux {} guest under {}, {} vCPU / {} queue(s), fio 4k iodepth 32 libaio direct=1 on the raw disk, {} s per job, {} boot(s) per device, image {} MiB; QEMU's device: {}",
        r.kernel,
        r.accel,
        r.queues,
        r.queues,
        r.runtime_s,
        r.repeats,
        r.image_bytes >> 20,
        r.qemu_drive
    );
    let _ = writeln!(
        t,
        "{:<10} {:<17} {:>30} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "job",
        "device",
        "IOPS median [min - max]",
        "MiB/s",
        "lat mean",
        "clat p50",
        "clat p99",
        "p99.9 us",
        "guest %"
    );
    for s in &r.summary {
        let f = &s.median_run;
        let _ = writeln!(
            t,
            "{:<10} {:<17} {:>30} {:>8.1} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>8.0}",
            s.job,
            s.device.label(),
            format!(
                "{:.0} [{:.0} - {:.0}]",
                s.iops_median, s.iops_min, s.iops_max
            ),
            f.mib_s,
            f.lat_mean_us,
            f.clat_p50_us,
            f.clat_p99_us,
            f.clat_p999_us,
            f.guest_cpu_percent
        );
    }
    for f in &r.failures {
        let _ = writeln!(
            t,
            "round {} {}: FAILED{} and left out: {}",
            f.round + 1,
            f.device.label(),
            if f.hung { " (hung)" } else { "" },
            f.error
        );
    }
    let _ = writeln!(
        t,
        "ratios ours / QEMU's: IOPS (median of each round's ratio [min - max]), mean latency QEMU's / ours"
    );
    for x in &r.ratios {
        let _ = writeln!(
            t,
            "  {:<10} IOPS {:.2} [{:.2} - {:.2}]  latency {:.2}{}",
            x.job,
            x.iops,
            x.min,
            x.max,
            x.lat_mean_qemu_over_ours,
            x.target
                .as_deref()
                .map(|t| format!("  (target {t})"))
                .unwrap_or_default()
        );
    }
    t
}

/// The deadline of each boot: `asked_s` when given, else scaled with the jobs' runtime, so
/// that a hung boot costs little more than a good one.
pub fn boot_timeout(asked_s: Option<u64>, runtime_s: u32) -> Duration {
    // Boot and module loading take some 5 s under TCG (PVH), the warm-up 3 s and each job
    // its 2 s ramp and runtime; the slack covers a loaded machine.
    let per_job = u64::from(runtime_s) + 2 + 10;
    Duration::from_secs(asked_s.unwrap_or(60 + 3 + 10 + per_job * JOBS.len() as u64))
}

pub fn write_json(r: &LinuxBenchReport, path: &Path) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(r).expect("report serializes");
    std::fs::write(path, text + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::launch::qemu::{Guest, LinuxBoot};

    #[test]
    fn the_builtin_device_replaces_the_vhost_user_one_and_nothing_else() {
        let config = QemuConfig {
            qemu: "qemu-system-x86_64".into(),
            socket: "/run/d/vhost.sock".into(),
            guest: Guest::Linux(LinuxBoot {
                kernel: "/lg/vmlinux".into(),
                initrd: "/lg/initrd.cpio".into(),
                append: kernel_command_line(1, 15),
                memory_mib: 512,
                cpus: 1,
                num_queues: 1,
            }),
            accel: ACCEL,
            bios: None,
        };
        let vhost = config.args();
        let builtin = builtin_args(
            &vhost,
            Path::new("/run/d,1/bench.img"),
            QEMU_DRIVE_OPTIONS,
            1,
        )
        .unwrap();
        let s = |v: &[OsString]| -> Vec<String> {
            v.iter().map(|a| a.to_string_lossy().into_owned()).collect()
        };
        let (vhost, builtin) = (s(&vhost), s(&builtin));
        assert!(!builtin
            .iter()
            .any(|a| a.contains("vhost-user") || a.contains("vus")));
        let pos = |v: &[String], x: &str| v.iter().position(|a| a == x);
        let d = pos(&builtin, "virtio-scsi-pci,id=scsi0,num_queues=1").unwrap();
        assert_eq!(
            builtin[d + 2],
            "if=none,id=d0,file=/run/d,,1/bench.img,format=raw,cache=none,aio=native"
        );
        assert_eq!(builtin[d + 4], "scsi-hd,drive=d0,bus=scsi0.0");
        // Everything else, in order, as the vhost-user run has it.
        let rest = |v: &[String]| -> Vec<String> {
            let mut out = Vec::new();
            let mut i = 0;
            while i < v.len() {
                let next = v.get(i + 1).map(String::as_str).unwrap_or("");
                let device = v[i] == "-drive"
                    || ["-chardev", "-device"].contains(&v[i].as_str())
                        && (next.contains("scsi") || next.starts_with("socket,id=vus"));
                if device {
                    i += 2;
                } else {
                    out.push(v[i].clone());
                    i += 1;
                }
            }
            out
        };
        assert_eq!(rest(&vhost), rest(&builtin));
        assert!(builtin.iter().any(|a| a.contains("flakyhba.bench=15")));
        assert!(
            !builtin.iter().any(|a| a == "-cpu"),
            "never pick a CPU model"
        );
        assert_eq!(builtin_args(&[], Path::new("x"), "", 1), None);
    }

    fn figures(iops: f64) -> FioFigures {
        FioFigures {
            iops,
            mib_s: iops / 256.0,
            ios: 1,
            lat_mean_us: 1e6 / iops,
            clat_p50_us: 0.0,
            clat_p99_us: 0.0,
            clat_p999_us: 0.0,
            clat_max_us: 0.0,
            guest_cpu_percent: 0.0,
        }
    }

    /// A fake suite: QEMU's device hangs in round 2, our backend fails in round 3; every
    /// other boot passes. The suite must try all six boots, keep the four good ones and
    /// pair only round 1 for the ratios.
    #[test]
    fn a_hung_or_failed_boot_is_reported_left_out_and_the_rounds_go_on() {
        let mut calls = Vec::new();
        let rounds = run_rounds(3, |device, round| {
            calls.push((device, round));
            let error = match (device, round) {
                (Device::QemuVirtioScsi, 1) => RunError::NoResult {
                    guest: GUEST,
                    secs: 117.0,
                    source: SerialError::TimedOut("the result line"),
                },
                (Device::Ours, 2) => {
                    RunError::fail(super::super::fio::BenchJudgeError::NoResultLine)
                }
                _ => {
                    let iops = if device == Device::Ours {
                        1200.0
                    } else {
                        1000.0
                    };
                    let jobs = JOBS.iter().map(|j| ((*j).to_owned(), figures(iops)));
                    return Ok(("6.1.0-57-amd64".into(), jobs.collect()));
                }
            };
            Err(Box::new(RunFailure::new(error)))
        })
        .unwrap();
        assert_eq!(calls.len(), 6, "every boot is tried: {calls:?}");
        assert_eq!(rounds.kernel, "6.1.0-57-amd64");
        assert_eq!(rounds.runs.len(), 4 * JOBS.len());
        assert!(!rounds
            .runs
            .iter()
            .any(|r| (r.device, r.round) == (Device::QemuVirtioScsi, 1)
                || (r.device, r.round) == (Device::Ours, 2)));
        let summary: Vec<(Device, u32, bool)> = rounds
            .failures
            .iter()
            .map(|f| (f.device, f.round, f.hung))
            .collect();
        assert_eq!(
            summary,
            [(Device::QemuVirtioScsi, 1, true), (Device::Ours, 2, false)]
        );
        assert!(rounds.failures[0]
            .error
            .starts_with("no result from the Linux guest after 117.0 s"));
        let (summary, ratios) = summarize(&rounds.runs);
        assert_eq!(summary.len(), 2 * JOBS.len());
        assert!(summary.iter().all(|s| s.iops_min == s.iops_max));
        // Only round 1 had both boots.
        assert!(ratios
            .iter()
            .all(|r| (r.iops, r.min, r.max) == (1.2, 1.2, 1.2)));
    }

    #[test]
    fn the_console_tail_is_short() {
        let long = "x".repeat(500);
        let text = format!("a\nb\n{long}\nc");
        assert_eq!(tail(&text, 2), format!("{}...\nc", "x".repeat(160)));
        assert_eq!(tail("a\nb", 5), "a\nb");
        assert_eq!(tail("", 3), "");
    }

    #[test]
    fn an_interruption_ends_the_rounds() {
        let mut calls = 0;
        let err = run_rounds(3, |_, _| {
            calls += 1;
            Err(Box::new(RunFailure::new(if calls == 2 {
                RunError::Interrupted
            } else {
                RunError::QemuDidNotExit
            })))
        })
        .unwrap_err();
        assert!(err.interrupted());
        assert_eq!(calls, 2);
    }

    #[test]
    fn the_boot_deadline_scales_with_the_runtime() {
        assert_eq!(boot_timeout(None, 10), Duration::from_secs(117));
        assert_eq!(boot_timeout(None, 3), Duration::from_secs(103));
        assert_eq!(boot_timeout(None, 600), Duration::from_secs(73 + 2 * 612));
        assert_eq!(boot_timeout(Some(40), 600), Duration::from_secs(40));
    }

    #[test]
    fn ratios_pair_the_boots_of_a_round() {
        let fig = |iops: f64, lat: f64| FioFigures {
            iops,
            mib_s: iops / 256.0,
            ios: 1,
            lat_mean_us: lat,
            clat_p50_us: 0.0,
            clat_p99_us: 0.0,
            clat_p999_us: 0.0,
            clat_max_us: 0.0,
            guest_cpu_percent: 0.0,
        };
        let run = |device, round, job: &str, iops| JobRun {
            device,
            round,
            job: job.into(),
            figures: fig(iops, 1e6 / iops),
        };
        let runs = vec![
            run(Device::Ours, 0, "randread", 1200.0),
            run(Device::QemuVirtioScsi, 0, "randread", 1000.0),
            run(Device::Ours, 1, "randread", 2400.0),
            run(Device::QemuVirtioScsi, 1, "randread", 1600.0),
            run(Device::Ours, 0, "randwrite", 500.0),
            run(Device::QemuVirtioScsi, 0, "randwrite", 1000.0),
        ];
        let (summary, ratios) = summarize(&runs);
        assert_eq!(summary.len(), 4);
        let rr = &ratios[0];
        assert_eq!(rr.job, "randread");
        assert!((rr.iops - 1.35).abs() < 1e-9, "{rr:?}");
        assert_eq!((rr.min, rr.max), (1.2, 1.5));
        assert_eq!(rr.target.as_deref(), Some(">= 1.0"));
        assert_eq!(ratios[1].iops, 0.5);
        assert!(ratios[1].target.is_none());
    }
}
