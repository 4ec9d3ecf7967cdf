//! Signals to a running `flakyhba-harness`: it must unwind, kill its children, remove its
//! run directory and socket, and exit 130. A SIGKILLed harness must still leave no child
//! behind (PR_SET_PDEATHSIG), and the next harness removes the directory it left.
//!
//! A fake backend (python3) that listens late, or listens and never answers, holds the
//! run at a known moment: before QEMU starts, or with QEMU blocked in its vhost-user
//! handshake. The last test uses the real binaries.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use common::{HarnessRun, Scratch};

const EXIT_INTERRUPTED: i32 = 130;

fn start(scratch: &Scratch, backend: &Path, image: &Path) -> HarnessRun {
    HarnessRun::start(
        &scratch.tmpdir(),
        &[
            OsStr::new("run"),
            OsStr::new("smoke"),
            OsStr::new("--backend"),
            backend.as_os_str(),
            OsStr::new("--image"),
            image.as_os_str(),
            OsStr::new("--timeout"),
            OsStr::new("60"),
        ],
    )
}

/// Waits until a child of the run shows up in /proc.
fn wait_for_child(scratch: &Scratch, what: &str) {
    for _ in 0..500 {
        let found = common::processes_mentioning(&scratch.tmpdir());
        if found.iter().any(|(_, cmdline)| cmdline.contains(what)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("no {what} process appeared");
}

fn assert_clean(scratch: &Scratch) {
    let survivors = common::wait_no_processes_mentioning(&scratch.tmpdir(), Duration::from_secs(5));
    assert!(survivors.is_empty(), "children left behind: {survivors:?}");
    let leftovers = scratch.leftovers();
    assert!(leftovers.is_empty(), "files left behind: {leftovers:?}");
}

fn interrupt_before_qemu_starts(signal: i32, name: &str) {
    let scratch = Scratch::new(name);
    // Listens only after 30 s: the harness is still polling for readiness.
    let backend = scratch.fake_backend(30.0);
    let image = scratch.root.join("image");
    std::fs::write(&image, "not started").unwrap();
    let mut run = start(&scratch, &backend, &image);
    run.wait_line("accel:", Duration::from_secs(10));
    wait_for_child(&scratch, "fake-backend");
    run.signal(signal);
    let (status, stdout, stderr) = run.finish(Duration::from_secs(10));
    assert_eq!(status.code(), Some(EXIT_INTERRUPTED), "{stdout}\n{stderr}");
    assert!(!stdout.contains("qemu:"), "QEMU started: {stdout}");
    assert_clean(&scratch);
}

fn interrupt_while_qemu_runs(signal: i32, name: &str) {
    let scratch = Scratch::new(name);
    // Listens at once but never answers: QEMU blocks in the vhost-user handshake.
    let backend = scratch.fake_backend(0.0);
    let mut run = start(&scratch, &backend, &common::image());
    run.wait_line("qemu: pid", Duration::from_secs(20));
    wait_for_child(&scratch, "qemu-system");
    std::thread::sleep(Duration::from_millis(200));
    run.signal(signal);
    let (status, stdout, stderr) = run.finish(Duration::from_secs(10));
    assert_eq!(status.code(), Some(EXIT_INTERRUPTED), "{stdout}\n{stderr}");
    assert_clean(&scratch);
}

#[test]
fn sigint_before_qemu_starts_kills_the_backend_and_cleans_up() {
    interrupt_before_qemu_starts(libc::SIGINT, "int-early");
}

#[test]
fn sigint_while_qemu_runs_kills_both_and_cleans_up() {
    interrupt_while_qemu_runs(libc::SIGINT, "int-qemu");
}

#[test]
fn sigterm_and_sighup_unwind_like_sigint() {
    interrupt_before_qemu_starts(libc::SIGHUP, "hup-early");
    interrupt_while_qemu_runs(libc::SIGTERM, "term-qemu");
}

#[test]
fn sigkilled_harness_leaves_no_children() {
    let scratch = Scratch::new("kill");
    let backend = scratch.fake_backend(0.0);
    let mut run = start(&scratch, &backend, &common::image());
    run.wait_line("qemu: pid", Duration::from_secs(20));
    wait_for_child(&scratch, "qemu-system");
    wait_for_child(&scratch, "fake-backend");
    run.signal(libc::SIGKILL);
    let (status, _, _) = run.finish(Duration::from_secs(10));
    assert_eq!(status.code(), None, "killed by a signal");
    // PR_SET_PDEATHSIG kills both; only the directory stays (nobody was left to remove it).
    let survivors = common::wait_no_processes_mentioning(&scratch.tmpdir(), Duration::from_secs(5));
    assert!(
        survivors.is_empty(),
        "children outlived a SIGKILLed harness: {survivors:?}"
    );
    assert!(
        !scratch.leftovers().is_empty(),
        "the killed run's directory stays"
    );
    // The next harness removes it: here one that fails at once for a missing backend.
    let next = start(
        &scratch,
        &scratch.root.join("no-such-backend"),
        &common::image(),
    );
    let (status, _, stderr) = next.finish(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("backend"), "{stderr}");
    let leftovers = scratch.leftovers();
    assert!(leftovers.is_empty(), "not swept: {leftovers:?}");
}

/// The real backend and guest: SIGINT as soon as QEMU is up. The guest may win the race
/// and pass first; either way nothing may be left behind.
#[test]
fn sigint_during_a_real_smoke_run_leaves_nothing_behind() {
    let scratch = Scratch::new("int-real");
    let mut run = start(&scratch, &common::backend(), &common::image());
    run.wait_line("qemu: pid", Duration::from_secs(20));
    run.signal(libc::SIGINT);
    let (status, stdout, stderr) = run.finish(Duration::from_secs(20));
    assert!(
        matches!(status.code(), Some(EXIT_INTERRUPTED) | Some(0)),
        "{status}\n{stdout}\n{stderr}"
    );
    assert_clean(&scratch);
}
