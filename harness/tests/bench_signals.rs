//! Issue 13 item 10: `bench --socket` ends promptly on SIGTERM, and a stream of spurious
//! interrupts does not keep resetting its stall timeout. The backend loses one READ(10)
//! and writes the call eventfd every 5 ms.

mod common;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use flakyhba_harness::bench::frontend::scsi::ScsiAddress;
use flakyhba_harness::bench::frontend::{FrontendConfig, ScsiFrontend};
use flakyhba_harness::launch::control::Control;
use flakyhba_harness::launch::listen::wait_listening;
use flakyhba_harness::launch::process::{ChildGuard, Stdout};

use common::{HarnessRun, Scratch};

const T: Duration = Duration::from_secs(10);

struct Backend {
    child: ChildGuard,
    socket: PathBuf,
    control: Control,
}

/// A backend that loses the first READ(10) and sends a spurious interrupt every 5 ms.
fn backend(scratch: &Scratch) -> Backend {
    let disk = scratch.root.join("disk.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let socket = scratch.root.join("vhost.sock");
    let control = scratch.root.join("control.sock");
    let mut cmd = Command::new(common::backend());
    cmd.arg("--socket-path")
        .arg(&socket)
        .arg("--control-socket")
        .arg(&control)
        .arg("--lun")
        .arg(&disk)
        .args(["--fault", "lose:opcode=read-10,once=true"])
        .args(["--fault", "spurious-interrupt:interval_ms=5"]);
    let log = scratch.root.join("backend.log");
    let mut child = ChildGuard::spawn("backend", cmd, &log, Stdout::Log).unwrap();
    if let Err(e) = wait_listening(&mut child, &socket, Instant::now() + T) {
        panic!("{e}\n{}", child.read_log());
    }
    let control = Control::connect(&control, Instant::now() + T).unwrap();
    Backend {
        child,
        socket,
        control,
    }
}

/// Polls the backend's counters until the read is lost and spurious interrupts flow.
fn wait_lost_and_spurious(be: &mut Backend) {
    let deadline = Instant::now() + T;
    loop {
        let stats = be.control.stats().unwrap();
        let lost = stats["fired"]["lose"].as_u64().unwrap();
        let spurious = stats["spurious_signals"].as_u64().unwrap();
        if lost == 1 && spurious >= 20 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no lost read with spurious interrupts: {stats}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn bench(scratch: &Scratch, be: &Backend, extra: &[&str]) -> HarnessRun {
    let mut args: Vec<&OsStr> = ["bench", "--duration", "0.3", "--queue-depth", "4"]
        .iter()
        .map(OsStr::new)
        .collect();
    args.extend(extra.iter().map(OsStr::new));
    args.push(OsStr::new("--socket"));
    args.push(be.socket.as_os_str());
    HarnessRun::start(&scratch.tmpdir(), &args)
}

#[test]
fn sigterm_ends_a_stalled_bench_promptly_and_leaves_nothing_behind() {
    let scratch = Scratch::new("bench-term");
    let mut be = backend(&scratch);
    let run = bench(&scratch, &be, &[]);
    wait_lost_and_spurious(&mut be);
    // Past the 0.3 s of load: the bench waits for the lost read.
    std::thread::sleep(Duration::from_millis(400));
    let sent = Instant::now();
    run.signal(libc::SIGTERM);
    // Before the fix it waited for its 10 s stall timeout, which the spurious interrupts
    // restarted every 5 ms: it never ended.
    let (status, stdout, stderr) = run.finish(Duration::from_secs(3));
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "{:?} after SIGTERM",
        sent.elapsed()
    );
    assert_eq!(status.code(), Some(130), "{stdout}\n{stderr}");
    assert!(stderr.contains("interrupted"), "{stderr}");
    assert_eq!(scratch.leftovers(), Vec::<PathBuf>::new());
    // The backend lives on and serves the next frontend: the lost read was dropped.
    assert!(be.child.try_wait().unwrap().is_none(), "backend died");
    let cfg = FrontendConfig::default();
    let mut fe = ScsiFrontend::connect(&be.socket, cfg).unwrap();
    let (blocks, _) = fe.read_capacity(ScsiAddress::default()).unwrap();
    assert_eq!(blocks, (16 << 20) / 512);
}

#[test]
fn spurious_interrupts_do_not_restart_the_stall_timeout() {
    let scratch = Scratch::new("bench-stall");
    let be = backend(&scratch);
    let started = Instant::now();
    let run = bench(&scratch, &be, &["--stall-timeout", "1"]);
    let (status, stdout, stderr) = run.finish(Duration::from_secs(8));
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("no completion within 1s") && stderr.contains("1 requests in flight"),
        "{stderr}"
    );
    // 0.3 s of load, 1 s of stall, and start-up.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}
