//! `make bench`: every case, round after round, each run against a freshly started
//! server on one image file, and the host's own read bandwidth of that file.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::cases::{cases, load, CaseDef, Server, HOST_READ, IDLE_FAULT};
use super::figures::Figures;
use super::frontend::load::Pattern;
use super::report::{ratios, summarize, CaseSummary, PeerFailure, SuiteReport};
use super::socket::run_on_socket;
use super::BenchError;
use crate::launch::listen::wait_listening;
use crate::launch::process::{ChildGuard, Stdout};
use crate::launch::rundir::{prepare_image, RunDir};
use crate::launch::signals;

/// How long a backend may take to listen.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(10);

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
    type CaseRuns = (Vec<(usize, Figures)>, Vec<PeerFailure>);
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
                // the suite: the figures of our backend still stand. A run a signal ended
                // (wherever it was waiting) ends the suite.
                Err(e) if def.server == Server::Peer && !signals::interrupted() => {
                    eprintln!("bench: FAILED: {e}");
                    failures.push(PeerFailure {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_parses_own_stat() {
        // Spins until the CPU time read moved by 50 ms; a busy host only makes that
        // take longer (the wall clock bounds the wait, not the figure).
        let me = std::process::id();
        let before = cpu_seconds(me).expect("own /proc/PID/stat");
        let t = Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after - before < 0.05 && t.elapsed() < Duration::from_secs(30) {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            after = cpu_seconds(me).expect("own /proc/PID/stat");
        }
        assert!(
            after - before >= 0.05,
            "{before} -> {after} after {:?}",
            t.elapsed()
        );
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
