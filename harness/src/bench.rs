//! `flakyhba-harness bench`: drives a vhost-user-scsi backend with the host-side frontend
//! (no guest in the way) and reports IOPS, bandwidth and latency percentiles. `--suite`
//! runs the fixed comparison of `make bench`: our backend against a peer backend and
//! against the host's own read bandwidth of the same image file.

use std::fmt::Write as _;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::frontend::load::{run_load, LoadResult, LoadSpec, Pattern};
use crate::frontend::scsi::ScsiAddress;
use crate::frontend::{FrontendConfig, FrontendError, ScsiFrontend};
use crate::launch::listen::{wait_listening, ListenError};
use crate::launch::process::{ChildGuard, ProcessError, Stdout};
use crate::launch::rundir::{prepare_image, RunDir, RunDirError};
use crate::launch::signals;

/// How long a backend may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

/// A fault that arms the engine in the request path but matches no request of the bench
/// (which addresses LUN 0 only): the cost of an armed, idle plan.
pub const IDLE_FAULT: &str = "status:lun=7,status=busy";

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    #[error(transparent)]
    RunDir(#[from] RunDirError),
    #[error(transparent)]
    Process(#[from] ProcessError),
    #[error(transparent)]
    Listen(#[from] ListenError),
    #[error("could not read image {0}: {1}")]
    CouldNotReadImage(PathBuf, std::io::Error),
    #[error("could not write {0}: {1}")]
    CouldNotWriteJson(PathBuf, std::io::Error),
    #[error("{name} failed: {source}\n--- server log ---\n{log}")]
    Run {
        name: String,
        source: Box<BenchError>,
        log: String,
    },
    #[error("{0} completions failed (not GOOD) in {1}; the first: {2}")]
    IoErrors(u64, String, String),
    #[error("interrupted by a signal")]
    Interrupted,
}

/// One load against one socket (`bench --socket`).
#[derive(Clone, Debug)]
pub struct LoadOptions {
    pub queues: u16,
    pub queue_depth: u16,
    pub block_bytes: u32,
    pub read_percent: u8,
    pub pattern: Pattern,
    pub duration: Duration,
    pub event_idx: bool,
    pub seed: u64,
}

impl LoadOptions {
    fn frontend_config(&self) -> FrontendConfig {
        FrontendConfig {
            request_queues: self.queues,
            queue_depth: self.queue_depth,
            max_transfer: self.block_bytes,
            event_idx: self.event_idx,
        }
    }

    fn spec(&self) -> LoadSpec {
        LoadSpec {
            lun: ScsiAddress::default(),
            block_bytes: self.block_bytes,
            read_percent: self.read_percent,
            pattern: self.pattern,
            duration: self.duration,
            seed: self.seed,
        }
    }
}

/// Connects to `socket`, runs the load and disconnects.
pub fn run_on_socket(socket: &Path, opts: &LoadOptions) -> Result<LoadResult, BenchError> {
    let mut fe = ScsiFrontend::connect(socket, opts.frontend_config())?;
    Ok(run_load(&mut fe, &opts.spec())?)
}

/// The figures of one run, as reported.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Figures {
    pub iops: f64,
    pub mib_s: f64,
    pub lat_mean_us: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
    pub lat_p999_us: f64,
    pub lat_max_us: f64,
    pub ios: u64,
    pub errors: u64,
    /// Kicks per I/O: how often the driver had to notify (EVENT_IDX suppresses most).
    pub kicks_per_io: f64,
    /// Sleeps for a call per I/O.
    pub waits_per_io: f64,
    /// Calls (used-buffer notifications) per I/O.
    pub calls_per_io: f64,
    /// Backend CPU seconds per second of the run, when measured.
    pub backend_cpu: Option<f64>,
    /// This process's (the frontend's) CPU seconds per second of the run, when measured.
    pub frontend_cpu: Option<f64>,
    /// Backend CPU microseconds per I/O: the cost of the request path, less sensitive to
    /// a noisy machine than IOPS when the backend is the bottleneck.
    pub backend_us_per_io: Option<f64>,
}

impl Figures {
    pub fn from_result(r: &LoadResult) -> Figures {
        let us = |ns: u64| ns as f64 / 1000.0;
        Figures {
            iops: r.iops(),
            mib_s: r.mib_per_s(),
            lat_mean_us: us(r.latency.mean()),
            lat_p50_us: us(r.latency.percentile(50)),
            lat_p99_us: us(r.latency.percentile(99)),
            lat_p999_us: us(r.latency.quantile(999, 1000)),
            lat_max_us: us(r.latency.max()),
            ios: r.ios(),
            errors: r.errors,
            kicks_per_io: r.kicks as f64 / r.ios().max(1) as f64,
            waits_per_io: r.waits as f64 / r.ios().max(1) as f64,
            calls_per_io: r.calls as f64 / r.ios().max(1) as f64,
            backend_cpu: None,
            frontend_cpu: None,
            backend_us_per_io: None,
        }
    }

    fn bandwidth_only(mib_s: f64) -> Figures {
        Figures {
            iops: 0.0,
            mib_s,
            lat_mean_us: 0.0,
            lat_p50_us: 0.0,
            lat_p99_us: 0.0,
            lat_p999_us: 0.0,
            lat_max_us: 0.0,
            ios: 0,
            errors: 0,
            kicks_per_io: 0.0,
            waits_per_io: 0.0,
            calls_per_io: 0.0,
            backend_cpu: None,
            frontend_cpu: None,
            backend_us_per_io: None,
        }
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} IOPS, {:.1} MiB/s, latency mean {:.1} us, p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us ({} I/Os, {} errors, {:.2} kicks/IO, {:.2} waits/IO, {:.2} calls/IO)",
            self.iops,
            self.mib_s,
            self.lat_mean_us,
            self.lat_p50_us,
            self.lat_p99_us,
            self.lat_p999_us,
            self.lat_max_us,
            self.ios,
            self.errors,
            self.kicks_per_io,
            self.waits_per_io,
            self.calls_per_io,
        )?;
        if let Some(c) = self.backend_cpu {
            write!(f, ", backend {c:.2} CPU")?;
        }
        if let Some(c) = self.frontend_cpu {
            write!(f, ", frontend {c:.2} CPU")?;
        }
        Ok(())
    }
}

/// What `make bench` compares.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    pub backend: PathBuf,
    /// A shell command that serves `--socket-path S IMAGE` (appended) as vhost-user-scsi.
    pub peer: Option<String>,
    /// The image file; created (filled with data) when missing or too small.
    pub image: Option<PathBuf>,
    pub image_bytes: u64,
    pub repeats: u32,
    pub duration: Duration,
    pub keep: Option<PathBuf>,
}

/// Which server a case runs against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Server {
    Ours,
    OursArmedIdle,
    Peer,
    /// The host reading the image file itself.
    Host,
}

impl Server {
    fn label(self) -> &'static str {
        match self {
            Server::Ours => "ours",
            Server::OursArmedIdle => "ours+idle plan",
            Server::Peer => "peer",
            Server::Host => "host",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct CaseSummary {
    pub name: String,
    pub server: Server,
    pub queues: u16,
    pub queue_depth: u16,
    pub block_bytes: u32,
    pub pattern: &'static str,
    pub read_percent: u8,
    /// The figure compared: IOPS for 4k cases, MiB/s for 1 MiB ones.
    pub metric: &'static str,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<Figures>,
    /// The round (from 0) of each entry of `runs`, so ratios pair runs of one round.
    pub rounds: Vec<usize>,
    /// The peer's runs that failed; they are left out of the figures.
    pub failures: Vec<RunFailure>,
}

/// A peer's run that failed (a lost request, an error status, a crash): the suite goes
/// on without it and the table says so. Our backend failing still ends the suite.
#[derive(Clone, Debug, Serialize)]
pub struct RunFailure {
    pub round: usize,
    pub error: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub name: String,
    /// Median over the rounds of the ratio of the two runs of one round (neighbours in
    /// time, so a drifting machine cancels out).
    pub value: f64,
    pub min: f64,
    pub max: f64,
    /// The ratio of the two cases' medians.
    pub of_medians: f64,
    /// The target, when it sets one.
    pub target: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SuiteReport {
    pub image: String,
    pub image_bytes: u64,
    pub repeats: u32,
    pub duration_s: f64,
    pub peer: Option<String>,
    pub cases: Vec<CaseSummary>,
    pub ratios: Vec<Ratio>,
}

struct CaseDef {
    name: &'static str,
    server: Server,
    load: LoadOptions,
}

const RANDREAD: &str = "4k randread qd32 1q";
const RANDWRITE: &str = "4k randwrite qd32 1q";
const SEQREAD: &str = "1M seqread qd8 1q";
const RANDREAD_4Q: &str = "4k randread qd32 4q";
const HOST_READ: &str = "host pread 1M seq";

fn load(queues: u16, qd: u16, block: u32, pattern: Pattern, read: u8, d: Duration) -> LoadOptions {
    LoadOptions {
        queues,
        queue_depth: qd,
        block_bytes: block,
        read_percent: read,
        pattern,
        duration: d,
        event_idx: true,
        seed: 1,
    }
}

fn cases(peer: bool, d: Duration) -> Vec<CaseDef> {
    use Pattern::{Random, Sequential};
    let mut v = Vec::new();
    let servers: &[Server] = if peer {
        &[Server::Ours, Server::Peer]
    } else {
        &[Server::Ours]
    };
    for &server in servers {
        v.push(CaseDef {
            name: RANDREAD,
            server,
            load: load(1, 32, 4096, Random, 100, d),
        });
        if server == Server::Ours {
            // Right after the same load without a plan (and before it in odd rounds, see
            // `run_suite`): the 2 % question needs the two runs as close as they can be.
            v.push(CaseDef {
                name: RANDREAD,
                server: Server::OursArmedIdle,
                load: load(1, 32, 4096, Random, 100, d),
            });
        }
        v.push(CaseDef {
            name: RANDWRITE,
            server,
            load: load(1, 32, 4096, Random, 0, d),
        });
        v.push(CaseDef {
            name: SEQREAD,
            server,
            load: load(1, 8, 1 << 20, Sequential, 100, d),
        });
    }
    v.push(CaseDef {
        name: RANDREAD_4Q,
        server: Server::Ours,
        load: load(4, 32, 4096, Random, 100, d),
    });
    v
}

/// The host's own sequential read bandwidth of `path` in MiB/s (1 MiB preads, wrapping),
/// the physical limit for a sequential read through any backend.
pub fn host_read_mib_s(path: &Path, duration: Duration) -> Result<f64, BenchError> {
    const CHUNK: u64 = 1 << 20;
    let err = |e| BenchError::CouldNotReadImage(path.to_owned(), e);
    let f = File::open(path).map_err(err)?;
    let len = f.metadata().map_err(err)?.len();
    let mut buf = vec![0u8; CHUNK as usize];
    let chunks = (len / CHUNK).max(1);
    let start = Instant::now();
    let mut bytes = 0u64;
    let mut i = 0u64;
    while start.elapsed() < duration {
        let n = f.read_at(&mut buf, (i % chunks) * CHUNK).map_err(err)?;
        bytes += n as u64;
        i += 1;
    }
    Ok(bytes as f64 / (1024.0 * 1024.0) / start.elapsed().as_secs_f64())
}

/// utime + stime of `pid` in seconds, from /proc/PID/stat.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| ticks / hz as f64)
}

fn spawn_server(
    opts: &SuiteOptions,
    server: Server,
    queues: u16,
    dir: &RunDir,
    image: &Path,
    run: usize,
) -> Result<(ChildGuard, PathBuf), BenchError> {
    let socket = dir.socket_path()?;
    let _ = std::fs::remove_file(&socket);
    let mut cmd;
    match server {
        Server::Ours | Server::OursArmedIdle => {
            cmd = Command::new(&opts.backend);
            cmd.arg("--socket-path")
                .arg(&socket)
                .arg("--lun")
                .arg(image)
                .arg("--num-queues")
                .arg(queues.to_string());
            if server == Server::OursArmedIdle {
                cmd.arg("--fault").arg(IDLE_FAULT);
            }
        }
        Server::Peer => {
            let peer = opts.peer.as_deref().unwrap_or_default();
            // The peer command is the user's shell text; the paths go in as arguments.
            cmd = Command::new("sh");
            cmd.arg("-c")
                .arg(format!("exec {peer} --socket-path \"$1\" \"$2\""))
                .arg("sh")
                .arg(&socket)
                .arg(image);
        }
        Server::Host => unreachable!("the host case starts no server"),
    }
    let name = server.label().replace([' ', '+'], "-");
    let log = dir.log_path(&format!("{name}-{run}"));
    let mut child = ChildGuard::spawn(&name, cmd, &log, Stdout::Log)?;
    wait_listening(&mut child, &socket, Instant::now() + LISTEN_TIMEOUT)?;
    Ok((child, socket))
}

/// One run of one case against a freshly started server.
fn run_case(
    opts: &SuiteOptions,
    def: &CaseDef,
    dir: &RunDir,
    image: &Path,
    round: usize,
) -> Result<Figures, BenchError> {
    let (mut child, socket) = spawn_server(opts, def.server, def.load.queues, dir, image, round)?;
    let me = std::process::id();
    let (cpu0, own0) = (cpu_seconds(child.pid()), cpu_seconds(me));
    let result = run_on_socket(&socket, &def.load);
    let (cpu1, own1) = (cpu_seconds(child.pid()), cpu_seconds(me));
    let _ = child.kill();
    let result = result.map_err(|e| BenchError::Run {
        name: format!("{} [{}] round {}", def.name, def.server.label(), round + 1),
        source: Box::new(e),
        log: child.read_log(),
    })?;
    let mut fig = Figures::from_result(&result);
    let secs = result.elapsed.as_secs_f64().max(1e-9);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        fig.backend_cpu = Some((b - a) / secs);
        fig.backend_us_per_io = Some((b - a) * 1e6 / fig.ios.max(1) as f64);
    }
    if let (Some(a), Some(b)) = (own0, own1) {
        fig.frontend_cpu = Some((b - a) / secs);
    }
    if fig.errors > 0 {
        return Err(BenchError::IoErrors(
            fig.errors,
            format!("{} [{}]", def.name, def.server.label()),
            result.first_error.clone().unwrap_or_default(),
        ));
    }
    Ok(fig)
}

fn summarize(
    name: &str,
    server: Server,
    l: &LoadOptions,
    done: Vec<(usize, Figures)>,
    failures: Vec<RunFailure>,
) -> CaseSummary {
    let (rounds, runs): (Vec<usize>, Vec<Figures>) = done.into_iter().unzip();
    let big = l.block_bytes >= 1 << 20;
    let mut vals: Vec<f64> = runs
        .iter()
        .map(|f| if big { f.mib_s } else { f.iops })
        .collect();
    vals.sort_by(f64::total_cmp);
    CaseSummary {
        name: name.to_owned(),
        server,
        queues: l.queues,
        queue_depth: l.queue_depth,
        block_bytes: l.block_bytes,
        pattern: match l.pattern {
            Pattern::Random => "random",
            Pattern::Sequential => "sequential",
        },
        read_percent: l.read_percent,
        metric: if big { "MiB/s" } else { "IOPS" },
        median: median(&vals),
        min: vals.first().copied().unwrap_or(0.0),
        max: vals.last().copied().unwrap_or(0.0),
        runs,
        rounds,
        failures,
    }
}

/// The runs of `a` and `b` that belong to the same round.
fn same_round<'a>(
    a: &'a CaseSummary,
    b: &'a CaseSummary,
) -> impl Iterator<Item = (&'a Figures, &'a Figures)> {
    a.rounds.iter().zip(&a.runs).filter_map(|(ra, x)| {
        let i = b.rounds.iter().position(|rb| rb == ra)?;
        Some((x, b.runs.get(i)?))
    })
}

fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// Runs every case `repeats` times, each run against a freshly started server.
pub fn run_suite(opts: &SuiteOptions) -> Result<SuiteReport, BenchError> {
    let dir = match &opts.keep {
        Some(d) => RunDir::kept(d)?,
        None => RunDir::temporary()?,
    };
    let image = opts
        .image
        .clone()
        .unwrap_or_else(|| dir.path().join("bench.img"));
    prepare_image(&image, opts.image_bytes)?;
    // Warm the page cache once so the first case does not pay for it.
    host_read_mib_s(&image, Duration::from_millis(500))?;
    // Rounds, not blocks: every case runs once per round, so a machine that speeds up or
    // slows down during the suite (shared or nested CPUs) skews no case against another,
    // and each round's runs of two cases are neighbours in time (see `ratios`).
    let defs = cases(opts.peer.is_some(), opts.duration);
    // Per case: the runs that passed, with their round, and the peer's that failed.
    type CaseRuns = (Vec<(usize, Figures)>, Vec<RunFailure>);
    let mut runs: Vec<CaseRuns> = vec![(Vec::new(), Vec::new()); defs.len()];
    let mut host_runs = Vec::new();
    for r in 0..opts.repeats as usize {
        // ABBA: odd rounds run the idle plan before the plain run, so a machine that
        // drifts during a round favours neither.
        let mut order: Vec<usize> = (0..defs.len()).collect();
        if r % 2 == 1 {
            order.swap(0, 1);
        }
        for i in order {
            let (def, (runs, failures)) = (&defs[i], &mut runs[i]);
            if signals::interrupted() {
                return Err(BenchError::Interrupted);
            }
            match run_case(opts, def, &dir, &image, r) {
                Ok(fig) => {
                    eprintln!(
                        "bench: round {}: {} [{}]: {fig}",
                        r + 1,
                        def.name,
                        def.server.label()
                    );
                    runs.push((r, fig));
                }
                // A peer that loses a request or fails one is a finding, not the end of
                // the suite: the figures of our backend still stand.
                Err(e) if def.server == Server::Peer && !matches!(e, BenchError::Interrupted) => {
                    eprintln!("bench: FAILED: {e}");
                    failures.push(RunFailure {
                        round: r,
                        error: e.to_string(),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        let mib = host_read_mib_s(&image, opts.duration)?;
        eprintln!("bench: round {}: {HOST_READ} [host]: {mib:.0} MiB/s", r + 1);
        host_runs.push((r, Figures::bandwidth_only(mib)));
    }
    let mut summaries: Vec<CaseSummary> = defs
        .iter()
        .zip(runs)
        .map(|(def, (runs, failures))| summarize(def.name, def.server, &def.load, runs, failures))
        .collect();
    let host_load = load(1, 1, 1 << 20, Pattern::Sequential, 100, opts.duration);
    summaries.push(summarize(
        HOST_READ,
        Server::Host,
        &host_load,
        host_runs,
        Vec::new(),
    ));
    let ratios = ratios(&summaries);
    Ok(SuiteReport {
        image: image.display().to_string(),
        image_bytes: std::fs::metadata(&image).map(|m| m.len()).unwrap_or(0),
        repeats: opts.repeats,
        duration_s: opts.duration.as_secs_f64(),
        peer: opts.peer.clone(),
        cases: summaries,
        ratios,
    })
}

fn find<'a>(s: &'a [CaseSummary], name: &str, server: Server) -> Option<&'a CaseSummary> {
    s.iter().find(|c| c.name == name && c.server == server)
}

fn ratios(s: &[CaseSummary]) -> Vec<Ratio> {
    let mut out = Vec::new();
    let mut push =
        |name: String, a: Option<&CaseSummary>, b: Option<&CaseSummary>, target: Option<&str>| {
            if let (Some(a), Some(b)) = (a, b) {
                if b.median > 0.0 && !a.runs.is_empty() && !b.runs.is_empty() {
                    let metric = |c: &CaseSummary, f: &Figures| {
                        if c.metric == "MiB/s" {
                            f.mib_s
                        } else {
                            f.iops
                        }
                    };
                    let mut paired: Vec<f64> = same_round(a, b)
                        .map(|(x, y)| metric(a, x) / metric(b, y))
                        .filter(|r| r.is_finite())
                        .collect();
                    paired.sort_by(f64::total_cmp);
                    let of_medians = a.median / b.median;
                    out.push(Ratio {
                        name,
                        value: if paired.is_empty() {
                            of_medians
                        } else {
                            median(&paired)
                        },
                        min: paired.first().copied().unwrap_or(of_medians),
                        max: paired.last().copied().unwrap_or(of_medians),
                        of_medians,
                        target: target.map(str::to_owned),
                    });
                }
            }
        };
    for n in [RANDREAD, RANDWRITE, SEQREAD] {
        push(
            format!("{n}: ours / peer"),
            find(s, n, Server::Ours),
            find(s, n, Server::Peer),
            // The figure for random reads is against rust-vmm's vhost-device-scsi.
            (n == RANDREAD).then_some(">= 1.3 against vhost-device-scsi"),
        );
    }
    push(
        format!("4 queues / 1 queue ({RANDREAD_4Q} / {RANDREAD})"),
        find(s, RANDREAD_4Q, Server::Ours),
        find(s, RANDREAD, Server::Ours),
        Some(">= 1.6"),
    );
    push(
        format!("{SEQREAD} / host read bandwidth"),
        find(s, SEQREAD, Server::Ours),
        find(s, HOST_READ, Server::Host),
        Some(">= 0.70"),
    );
    push(
        format!("peer {SEQREAD} / host read bandwidth"),
        find(s, SEQREAD, Server::Peer),
        find(s, HOST_READ, Server::Host),
        None,
    );
    push(
        format!("armed idle plan / no plan ({RANDREAD})"),
        find(s, RANDREAD, Server::OursArmedIdle),
        find(s, RANDREAD, Server::Ours),
        Some(">= 0.98"),
    );
    // The same question in backend CPU per I/O (inverted so that above 1 is better here too).
    if let (Some(idle), Some(none)) = (
        find(s, RANDREAD, Server::OursArmedIdle),
        find(s, RANDREAD, Server::Ours),
    ) {
        let mut paired: Vec<f64> = same_round(idle, none)
            .filter_map(|(x, y)| Some(y.backend_us_per_io? / x.backend_us_per_io?))
            .filter(|r| r.is_finite())
            .collect();
        paired.sort_by(f64::total_cmp);
        if let (Some(&min), Some(&max)) = (paired.first(), paired.last()) {
            let per_io = |c: &CaseSummary| {
                let mut v: Vec<f64> = c.runs.iter().filter_map(|f| f.backend_us_per_io).collect();
                v.sort_by(f64::total_cmp);
                median(&v)
            };
            out.push(Ratio {
                name: format!("backend CPU per I/O: no plan / armed idle plan ({RANDREAD})"),
                value: median(&paired),
                min,
                max,
                of_medians: per_io(none) / per_io(idle),
                target: Some(">= 0.98".into()),
            });
        }
    }
    out
}

/// The terminal table.
pub fn render_table(r: &SuiteReport) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "image {} ({} MiB), {} runs of {:.1} s per case, median [min - max]{}",
        r.image,
        r.image_bytes >> 20,
        r.repeats,
        r.duration_s,
        r.peer
            .as_deref()
            .map(|p| format!(", peer: {p}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        t,
        "{:<22} {:<15} {:>30} {:>9} {:>9} {:>8} {:>8} {:>9}",
        "case",
        "server",
        "median [min - max]",
        "p50 us",
        "p99 us",
        "srv cpu",
        "fe cpu",
        "srv us/IO"
    );
    for c in &r.cases {
        let value = |f: &Figures| {
            if c.metric == "MiB/s" {
                f.mib_s
            } else {
                f.iops
            }
        };
        // Latency and CPU of the run closest to the median.
        let mid = c.runs.iter().min_by(|a, b| {
            (value(a) - c.median)
                .abs()
                .total_cmp(&(value(b) - c.median).abs())
        });
        let cpu = |c: Option<f64>| c.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into());
        let (p50, p99, srv, fe, per_io) = match mid {
            Some(f) if c.server != Server::Host => (
                format!("{:.1}", f.lat_p50_us),
                format!("{:.1}", f.lat_p99_us),
                cpu(f.backend_cpu),
                cpu(f.frontend_cpu),
                cpu(f.backend_us_per_io),
            ),
            _ => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        let fig = if c.runs.is_empty() {
            format!("no run passed ({})", c.metric)
        } else {
            format!("{:.0} {} [{:.0} - {:.0}]", c.median, c.metric, c.min, c.max)
        };
        let _ = writeln!(
            t,
            "{:<22} {:<15} {:>30} {:>9} {:>9} {:>8} {:>8} {:>9}",
            c.name,
            c.server.label(),
            fig,
            p50,
            p99,
            srv,
            fe,
            per_io
        );
        if let Some(first) = c.failures.first() {
            let _ = writeln!(
                t,
                "  {} of {} runs FAILED and are left out; round {}: {}",
                c.failures.len(),
                c.failures.len() + c.runs.len(),
                first.round + 1,
                first.error.lines().next().unwrap_or_default()
            );
        }
    }
    let _ = writeln!(
        t,
        "ratios: median of each round's ratio [min - max], then the ratio of the medians"
    );
    for x in &r.ratios {
        let _ = writeln!(
            t,
            "  {:<70} {:>5.2} [{:.2} - {:.2}] {:>5.2}{}",
            x.name,
            x.value,
            x.min,
            x.max,
            x.of_medians,
            x.target
                .as_deref()
                .map(|t| format!("  (target {t})"))
                .unwrap_or_default()
        );
    }
    t
}

pub fn write_json(r: &SuiteReport, path: &Path) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(r).expect("report serializes");
    std::fs::write(path, text + "\n").map_err(|e| BenchError::CouldNotWriteJson(path.to_owned(), e))
}

/// `flakyhba-harness bench`.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Drive the vhost-user-scsi backend listening on PATH (one load, one report).
    #[arg(
        long,
        value_name = "PATH",
        required_unless_present = "suite",
        conflicts_with = "suite"
    )]
    pub socket: Option<PathBuf>,
    /// Run the `make bench` comparison instead: start our backend (and --peer) on one
    /// image file for every run of every case.
    #[arg(long)]
    pub suite: bool,
    /// Request queues, each driven by its own thread.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=62))]
    pub queues: u16,
    /// Requests kept in flight on each queue.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=341))]
    pub queue_depth: u16,
    /// Bytes per request: a number with an optional k or M suffix (4k, 1M).
    #[arg(long, default_value = "4k", value_parser = parse_size)]
    pub block_size: u64,
    /// Percentage of reads; the rest are writes.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub read_percent: u8,
    /// LBA order.
    #[arg(long, value_enum, default_value = "random")]
    pub pattern: PatternArg,
    /// Seconds of load (of each run with --suite).
    #[arg(long, default_value_t = 3.0)]
    pub duration: f64,
    /// Do not negotiate VIRTIO_RING_F_EVENT_IDX (a kick and a call per request).
    #[arg(long)]
    pub no_event_idx: bool,
    /// Seed of the LBA and read/write draws.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// --suite: our backend binary [default: $FLAKYHBA_BACKEND, else target/release/vhost-user-flakyhba]
    #[arg(long)]
    pub backend: Option<PathBuf>,
    /// --suite: a peer vhost-user-scsi backend: a shell command to which
    /// `--socket-path S IMAGE` is appended; started afresh for every run.
    #[arg(long, value_name = "COMMAND")]
    pub peer: Option<String>,
    /// --suite: the image file (filled with data when missing or smaller than --image-size).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// --suite: size of the image file.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub image_size: u64,
    /// --suite: runs of each case (median, min and max are reported).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    pub repeats: u32,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    /// --suite: keep the logs (and the image, unless --image) in DIR.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum PatternArg {
    Random,
    Sequential,
}

/// `4096`, `4k`, `1M`, `256M`, `1G` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is not a size (a positive number, optional k/M/G)"))
}

/// Runs the subcommand; `default_backend` serves when neither --backend nor
/// $FLAKYHBA_BACKEND names one.
pub fn run_cli(args: BenchArgs, default_backend: PathBuf) -> Result<(), BenchError> {
    if !(args.duration > 0.0 && args.duration.is_finite()) {
        return Err(FrontendError::BadConfig(format!(
            "--duration {} is not a positive number of seconds",
            args.duration
        ))
        .into());
    }
    let duration = Duration::from_secs_f64(args.duration);
    if args.suite {
        let backend = args
            .backend
            .or_else(|| std::env::var_os("FLAKYHBA_BACKEND").map(PathBuf::from))
            .unwrap_or(default_backend);
        let opts = SuiteOptions {
            backend,
            peer: args.peer.filter(|p| !p.trim().is_empty()),
            image: args.image,
            image_bytes: args.image_size,
            repeats: args.repeats,
            duration,
            keep: args.keep,
        };
        let report = run_suite(&opts)?;
        print!("{}", render_table(&report));
        if let Some(path) = &args.json {
            write_json(&report, path)?;
        }
        return Ok(());
    }
    let Some(socket) = args.socket else {
        return Err(FrontendError::BadConfig("--socket or --suite is needed".into()).into());
    };
    let block_bytes = u32::try_from(args.block_size).map_err(|_| {
        FrontendError::BadConfig(format!("--block-size {} too large", args.block_size))
    })?;
    let opts = LoadOptions {
        queues: args.queues,
        queue_depth: args.queue_depth,
        block_bytes,
        read_percent: args.read_percent,
        pattern: match args.pattern {
            PatternArg::Random => Pattern::Random,
            PatternArg::Sequential => Pattern::Sequential,
        },
        duration,
        event_idx: !args.no_event_idx,
        seed: args.seed,
    };
    let result = run_on_socket(&socket, &opts)?;
    let fig = Figures::from_result(&result);
    println!(
        "{} queue(s) x QD{}, {} B {:?} {}% read, {:.1} s: {fig}",
        opts.queues,
        opts.queue_depth,
        opts.block_bytes,
        opts.pattern,
        opts.read_percent,
        result.elapsed.as_secs_f64()
    );
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&fig).expect("figures serialize");
        std::fs::write(path, text + "\n")
            .map_err(|e| BenchError::CouldNotWriteJson(path.to_owned(), e))?;
    }
    if fig.errors > 0 {
        return Err(BenchError::IoErrors(
            fig.errors,
            "bench".into(),
            result.first_error.clone().unwrap_or_default(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, server: Server, median: f64) -> CaseSummary {
        CaseSummary {
            name: name.into(),
            server,
            queues: 1,
            queue_depth: 32,
            block_bytes: 4096,
            pattern: "random",
            read_percent: 100,
            metric: "IOPS",
            median,
            min: median,
            max: median,
            runs: vec![Figures {
                iops: median,
                ..Figures::bandwidth_only(0.0)
            }],
            rounds: vec![0],
            failures: vec![],
        }
    }

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert!(parse_size("0").is_err());
        assert!(parse_size("k").is_err());
        assert!(parse_size("12x").is_err());
    }

    #[test]
    fn the_idle_plan_run_is_the_plain_runs_neighbour() {
        // `run_suite` swaps the first two cases in odd rounds (ABBA).
        for peer in [false, true] {
            let c = cases(peer, Duration::from_secs(1));
            assert_eq!((c[0].name, c[0].server), (RANDREAD, Server::Ours));
            assert_eq!((c[1].name, c[1].server), (RANDREAD, Server::OursArmedIdle));
            assert_eq!(c.len(), if peer { 8 } else { 5 });
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[1.0, 2.0, 9.0]), 2.0);
        assert_eq!(median(&[1.0, 3.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn ratios_compare_the_right_cases() {
        let s = vec![
            case(RANDREAD, Server::Ours, 100.0),
            case(RANDREAD, Server::Peer, 50.0),
            case(RANDREAD_4Q, Server::Ours, 180.0),
            case(RANDREAD, Server::OursArmedIdle, 99.0),
        ];
        let r = ratios(&s);
        let get = |n: &str| r.iter().find(|x| x.name.starts_with(n)).map(|x| x.value);
        assert_eq!(get(&format!("{RANDREAD}: ours / peer")), Some(2.0));
        let target = |n: &str| {
            r.iter()
                .find(|x| x.name.starts_with(n))
                .and_then(|x| x.target.clone())
        };
        assert_eq!(
            target(&format!("{RANDREAD}: ours / peer")).as_deref(),
            Some(">= 1.3 against vhost-device-scsi")
        );
        assert_eq!(get("4 queues"), Some(1.8));
        assert_eq!(get("armed idle"), Some(0.99));
        // No host or write cases: no such ratios.
        assert_eq!(get(&format!("{SEQREAD} / host")), None);
        assert_eq!(get(RANDWRITE), None);
    }

    #[test]
    fn ratios_pair_the_runs_of_each_round() {
        let with_runs = |server, iops: &[f64]| {
            let mut c = case(RANDREAD, server, 0.0);
            c.runs = iops
                .iter()
                .map(|&i| {
                    let mut f = Figures::bandwidth_only(0.0);
                    f.iops = i;
                    f
                })
                .collect();
            c.rounds = (0..iops.len()).collect();
            let mut v = iops.to_vec();
            v.sort_by(f64::total_cmp);
            c.median = median(&v);
            c
        };
        // The machine doubles its speed after round 1; the idle plan costs 10 % in
        // every round, and every paired ratio says so.
        let mut s = vec![
            with_runs(Server::Ours, &[100.0, 200.0, 200.0]),
            with_runs(Server::OursArmedIdle, &[90.0, 180.0, 180.0]),
        ];
        // 5 us of backend CPU per I/O without a plan, 5.5 us with the idle one.
        for (c, us) in s.iter_mut().zip([5.0, 5.5]) {
            for f in &mut c.runs {
                f.backend_us_per_io = Some(us);
            }
        }
        let r = ratios(&s);
        let cpu = r
            .iter()
            .find(|x| x.name.starts_with("backend CPU per I/O"))
            .unwrap();
        assert!((cpu.value - 5.0 / 5.5).abs() < 1e-9, "{cpu:?}");
        assert!((cpu.of_medians - 5.0 / 5.5).abs() < 1e-9, "{cpu:?}");
        let idle = r.iter().find(|x| x.name.starts_with("armed idle")).unwrap();
        assert!((idle.value - 0.9).abs() < 1e-9, "{idle:?}");
        assert!((idle.min - 0.9).abs() < 1e-9 && (idle.max - 0.9).abs() < 1e-9);
        assert!((idle.of_medians - 0.9).abs() < 1e-9);
        // One round on a disturbed machine: the median of the rounds ignores it.
        let s = vec![
            with_runs(Server::Ours, &[200.0, 200.0, 200.0]),
            with_runs(Server::OursArmedIdle, &[190.0, 100.0, 196.0]),
        ];
        let r = ratios(&s);
        let idle = r.iter().find(|x| x.name.starts_with("armed idle")).unwrap();
        assert!((idle.value - 0.95).abs() < 1e-9, "{idle:?}");
        assert!((idle.min - 0.5).abs() < 1e-9 && (idle.max - 0.98).abs() < 1e-9);
    }

    #[test]
    fn cpu_seconds_parses_own_stat() {
        let before = cpu_seconds(std::process::id()).expect("own /proc/PID/stat");
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(150) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = cpu_seconds(std::process::id()).expect("own /proc/PID/stat");
        assert!(after - before >= 0.05, "{before} -> {after}");
    }

    #[test]
    fn host_read_measures_a_file() {
        let dir = RunDir::temporary().unwrap();
        let img = dir.path().join("i.img");
        prepare_image(&img, 4 << 20).unwrap();
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 4 << 20);
        let mib = host_read_mib_s(&img, Duration::from_millis(50)).unwrap();
        assert!(mib > 1.0, "{mib}");
    }
}
