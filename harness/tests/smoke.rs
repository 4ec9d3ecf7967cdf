//! The real smoke scenario end to end: the built backend and guest image under QEMU.
//! They come from FLAKYHBA_BACKEND / FLAKYHBA_IMAGE (the Makefile sets them) or the
//! default release paths; a missing one fails the test.

mod common;

use std::ffi::OsStr;
use std::time::Duration;

use common::{HarnessRun, Scratch};

fn smoke(irq: &str) {
    let scratch = Scratch::new(&format!("smoke-{irq}"));
    let (backend, image) = (common::backend(), common::image());
    let run = HarnessRun::start(
        &scratch.tmpdir(),
        &[
            OsStr::new("run"),
            OsStr::new("smoke"),
            OsStr::new("--irq"),
            OsStr::new(irq),
            OsStr::new("--backend"),
            backend.as_os_str(),
            OsStr::new("--image"),
            image.as_os_str(),
            OsStr::new("--seed"),
            OsStr::new("77"),
            OsStr::new("--timeout"),
            OsStr::new("60"),
        ],
    );
    let (status, stdout, stderr) = run.finish(Duration::from_secs(90));
    assert!(
        status.success(),
        "{status}\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.starts_with(&format!("smoke irq={irq} accel="))
            && summary.contains(": PASS boot-to-result ")
            && summary.contains(", 64 blocks verified in image"),
        "{stdout}"
    );
    assert!(scratch.leftovers().is_empty(), "{:?}", scratch.leftovers());
}

#[test]
fn smoke_irq_on_passes_and_the_image_holds_the_pattern() {
    smoke("on");
}

#[test]
fn smoke_irq_off_passes_and_the_image_holds_the_pattern() {
    smoke("off");
}
