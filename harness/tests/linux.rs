//! The stock Linux scenario end to end: Debian's kernel and the busybox initramfs of
//! linux-guest/build.sh, under TCG, against the built backend. The guest comes from
//! FLAKYHBA_LINUX_GUEST or target/linux-guest; when it is missing the test fails with
//! the command that builds it (never skips).

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use common::{HarnessRun, Scratch};
use flakyhba_harness::linux::{INITRD_FILE, KERNEL_FILE};

/// One TCG guest at a time: two at once on a 2-core machine only slow both down.
static ONE_GUEST: Mutex<()> = Mutex::new(());

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn linux_guest() -> PathBuf {
    let root = workspace_root();
    let dir = std::env::var_os("FLAKYHBA_LINUX_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/linux-guest"));
    for file in [KERNEL_FILE, INITRD_FILE] {
        assert!(
            dir.join(file).is_file(),
            "{} is missing: build the Linux guest with `{} {}` (or set FLAKYHBA_LINUX_GUEST)",
            dir.join(file).display(),
            root.join("linux-guest/build.sh").display(),
            dir.display()
        );
    }
    dir
}

/// Runs `linux --queues QUEUES EXTRA...`, which must pass with `label` (`queues=1`,
/// `queues=1 hotplug`) in its summary line; returns its stdout.
fn linux(queues: &str, extra: &[&str]) -> String {
    linux_run(queues, extra, &format!("queues={queues}"))
}

fn linux_run(queues: &str, extra: &[&str], label: &str) -> String {
    let (backend, guest) = (common::backend(), linux_guest());
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new(&format!("linux-{queues}-{}", extra.len()));
    let mut args = vec![
        OsStr::new("linux"),
        OsStr::new("--queues"),
        OsStr::new(queues),
        OsStr::new("--backend"),
        backend.as_os_str(),
        OsStr::new("--guest-dir"),
        guest.as_os_str(),
        OsStr::new("--timeout"),
        OsStr::new("400"),
    ];
    args.extend(extra.iter().map(OsStr::new));
    let run = HarnessRun::start(&scratch.tmpdir(), &args);
    let (status, stdout, stderr) = run.finish(Duration::from_secs(460));
    assert!(
        status.success(),
        "{status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with(&format!("linux {label} accel=tcg: PASS wall "))
            && summary.contains(&format!(", {queues} of {queues} queues completed I/O)")),
        "{stdout}"
    );
    assert!(scratch.leftovers().is_empty(), "{:?}", scratch.leftovers());
    stdout
}

#[test]
fn linux_on_one_queue_passes_every_step() {
    linux("1", &[]);
}

#[test]
fn linux_on_four_queues_passes_every_step_and_uses_each_queue() {
    linux("4", &[]);
}

/// The backend loses one read; Linux's timeout leaves it pending (virtio_scsi resets the
/// timer), a LU reset from the error handler ends it, and I/O carries on.
#[test]
fn linux_held_read_is_ended_by_a_lu_reset_and_io_carries_on() {
    let stdout = linux("1", &["--held-read"]);
    assert!(
        stdout.contains(", --fault lose:direction=read,") && stdout.contains(" flakyhba.hold="),
        "{stdout}"
    );
}

/// Over the control socket the harness adds LUN 1, removes it and grows LUN 0 as the guest
/// asks: Linux must attach the new disk as 0:0:0:1 (not 0:0:0:16385), write and verify it,
/// drop it, and see sda grow; the trace holds the three events it acted on.
#[test]
fn linux_sees_hot_add_hot_remove_and_resize() {
    let stdout = linux_run("1", &["--hotplug"], "queues=1 hotplug");
    assert!(
        stdout.contains(" flakyhba.hotadd=32768 flakyhba.resize=589824"),
        "{stdout}"
    );
    for action in ["add-lun", "remove-lun", "resize-lun"] {
        let cmd = format!(r#""cmd":"{action}""#);
        assert!(
            stdout.lines().any(|l| l.starts_with("hotplug: ")
                && l.contains(&cmd)
                && l.contains(r#""ok":true"#)),
            "{action}: {stdout}"
        );
    }
    let events: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("trace: "))
        .collect();
    assert_eq!(events.len(), 3, "{stdout}");
    assert!(
        events[0].contains(r#""event":"transport-reset","target":0,"lun":1,"detail":"rescan""#)
            && events[1]
                .contains(r#""event":"transport-reset","target":0,"lun":1,"detail":"removed""#)
            && events[2]
                .contains(r#""event":"param-change","target":0,"lun":0,"detail":"0x2a/0x09""#),
        "{stdout}"
    );
    assert!(
        stdout.contains("(kernel 6.") && stdout.contains(", 12 steps,"),
        "{stdout}"
    );
}

#[test]
fn a_missing_linux_guest_fails_with_the_build_command() {
    let scratch = Scratch::new("linux-missing");
    let empty = scratch.root.join("no-guest");
    let run = HarnessRun::start(
        &scratch.tmpdir(),
        &[
            OsStr::new("linux"),
            OsStr::new("--backend"),
            OsStr::new("/bin/sh"),
            OsStr::new("--guest-dir"),
            empty.as_os_str(),
        ],
    );
    let (status, stdout, stderr) = run.finish(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    let build = format!(
        "build it with `{} {}`",
        workspace_root().join("linux-guest/build.sh").display(),
        empty.display()
    );
    assert!(
        stderr.contains("Linux kernel ") && stderr.contains(&build),
        "{stderr}"
    );
    assert!(!stdout.contains("qemu:"), "{stdout}");
    assert!(scratch.leftovers().is_empty(), "{:?}", scratch.leftovers());
}
