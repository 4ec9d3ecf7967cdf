//! Runs that must fail, cleanly: exit status 1, the reason and the logs on stderr, and
//! nothing left behind.

mod common;

use std::ffi::OsStr;
use std::path::Path;
use std::time::Duration;

use common::{HarnessRun, Scratch};

fn run(scratch: &Scratch, backend: &Path, image: &Path, timeout: &str) -> (i32, String, String) {
    let run = HarnessRun::start(
        &scratch.tmpdir(),
        &[
            OsStr::new("run"),
            OsStr::new("smoke"),
            OsStr::new("--backend"),
            backend.as_os_str(),
            OsStr::new("--image"),
            image.as_os_str(),
            OsStr::new("--timeout"),
            OsStr::new(timeout),
        ],
    );
    let (status, stdout, stderr) = run.finish(Duration::from_secs(30));
    (status.code().expect("exited"), stdout, stderr)
}

#[test]
fn a_backend_that_exits_before_listening_fails_with_its_log() {
    let scratch = Scratch::new("exits");
    let backend = scratch.root.join("exiting-backend");
    std::fs::write(&backend, "#!/bin/sh\necho 'cannot open LUN' >&2\nexit 3\n").unwrap();
    std::process::Command::new("chmod")
        .arg("+x")
        .arg(&backend)
        .status()
        .unwrap();
    let image = scratch.root.join("image");
    std::fs::write(&image, "unused").unwrap();
    let (code, stdout, stderr) = run(&scratch, &backend, &image, "10");
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("exited (exit status: 3) before listening"),
        "{stderr}"
    );
    assert!(stderr.contains("cannot open LUN"), "{stderr}");
    assert!(!stdout.contains("qemu:"), "{stdout}");
    assert!(scratch.leftovers().is_empty(), "{:?}", scratch.leftovers());
}

#[test]
fn a_guest_that_never_reports_times_out_and_shows_the_command_line() {
    let scratch = Scratch::new("timeout");
    // QEMU blocks in the handshake with this backend, so no result ever comes.
    let backend = scratch.fake_backend(0.0);
    let (code, stdout, stderr) = run(&scratch, &backend, &common::image(), "2");
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    assert!(
        stderr.contains("no result from the guest after"),
        "{stderr}"
    );
    assert!(stderr.contains("--- QEMU command line\n"), "{stderr}");
    assert!(
        stderr.contains("-device vhost-user-scsi-pci,chardev=vus"),
        "{stderr}"
    );
    assert!(stderr.contains("--- backend log\n"), "{stderr}");
    let survivors = common::wait_no_processes_mentioning(&scratch.tmpdir(), Duration::from_secs(5));
    assert!(survivors.is_empty(), "{survivors:?}");
    assert!(scratch.leftovers().is_empty(), "{:?}", scratch.leftovers());
}

#[test]
fn missing_binaries_name_the_command_that_builds_them() {
    let scratch = Scratch::new("missing");
    let nowhere = scratch.root.join("nowhere");
    let (code, _, stderr) = run(&scratch, &nowhere, &nowhere, "10");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cargo build --release -p flakyhba-backend"),
        "{stderr}"
    );
    let backend = scratch.fake_backend(0.0);
    let (code, _, stderr) = run(&scratch, &backend, &nowhere, "10");
    assert_eq!(code, 1);
    assert!(
        stderr.contains("cargo build --release -p flakyhba-guest --target x86_64-unknown-none"),
        "{stderr}"
    );
}
