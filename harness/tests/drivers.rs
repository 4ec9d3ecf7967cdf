//! The driver card end to end, on its quickest driver (SeaBIOS booting the firmware
//! guest's MBR, about 0.1 s under TCG): cells judged against their row files, a hung cell
//! stopped within its stall window and leaving nothing behind, a cell that differs from
//! its row file failing the card, and an interrupt during a hung cell. The firmware
//! guest comes from FLAKYHBA_FIRMWARE_GUEST or target/firmware-guest; when it is missing
//! the test fails with the command that builds it (never skips). `make test` runs the
//! card's subset on every driver.

mod common;

use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use common::{HarnessRun, Scratch};
use flakyhba_harness::drivers::report;
use serde_json::Value;

/// One TCG guest at a time: two at once on a 2-core machine only slow both down.
static ONE_GUEST: Mutex<()> = Mutex::new(());
/// The card's stall window (drivers::watch::STALL) and what a hung cell may cost beyond.
const STALL_S: f64 = 10.0;
const HANG_MARGIN_S: f64 = 5.0;

fn firmware_guest() -> PathBuf {
    let dir = std::env::var_os("FLAKYHBA_FIRMWARE_GUEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| common::workspace_root().join("target/firmware-guest"));
    assert!(
        dir.join("disk.img").is_file(),
        "{} is missing: build it with `{} {}` (or `make firmware-guest`), or set \
         FLAKYHBA_FIRMWARE_GUEST",
        dir.join("disk.img").display(),
        common::workspace_root()
            .join("firmware-guest/build.sh")
            .display(),
        dir.display()
    );
    dir
}

/// `drivers --driver seabios` with its output in the scratch directory.
fn start(scratch: &Scratch, rows: &str, extra: &[&OsStr]) -> HarnessRun {
    let (backend, firmware) = (common::backend(), firmware_guest());
    let out = scratch.root.join("out");
    let mut args = vec![
        OsStr::new("drivers"),
        OsStr::new("--driver"),
        OsStr::new("seabios"),
        OsStr::new("--only"),
        OsStr::new(rows),
        OsStr::new("--backend"),
        backend.as_os_str(),
        OsStr::new("--firmware-dir"),
        firmware.as_os_str(),
        OsStr::new("--out"),
        out.as_os_str(),
    ];
    args.extend_from_slice(extra);
    HarnessRun::start(&scratch.tmpdir(), &args)
}

fn assert_clean(scratch: &Scratch) {
    let survivors = common::wait_no_processes_mentioning(&scratch.tmpdir(), Duration::from_secs(5));
    assert!(survivors.is_empty(), "children left behind: {survivors:?}");
    let leftovers = scratch.leftovers();
    assert!(leftovers.is_empty(), "files left behind: {leftovers:?}");
}

fn report(scratch: &Scratch) -> Value {
    let text = std::fs::read_to_string(report::json_path(&scratch.root.join("out"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn cells_are_judged_and_a_hung_one_is_stopped_within_its_window() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("card-seabios");
    let run = start(&scratch, "baseline,lose-one,medium-error", &[]);
    let (status, stdout, stderr) = run.finish(Duration::from_secs(120));
    assert!(status.success(), "{status}\n{stdout}\n{stderr}");
    for row in [
        "baseline survived",
        "lose-one hung",
        "medium-error error-reported",
    ] {
        let words = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            stdout.lines().any(|l| words(l) == row),
            "{row:?} missing:\n{stdout}"
        );
    }
    assert!(
        stdout.contains("drivers: PASS: 3 cells, 0 differ from their row files"),
        "{stdout}"
    );
    let r = report(&scratch);
    assert_eq!(r["passed"], true);
    assert!(r["versions"]["seabios"]
        .as_str()
        .unwrap()
        .starts_with("1.16"));
    let hung = &r["cells"][1];
    assert_eq!(
        (hung["row"].as_str(), hung["outcome"].as_str()),
        (Some("lose-one"), Some("hung"))
    );
    let reason = hung["reason"].as_str().unwrap();
    assert!(
        reason.contains("no progress for 10 s")
            && reason.contains("1 command(s) never completed: read-10 LBA 8192+8"),
        "{reason}"
    );
    let wall = hung["wall_s"].as_f64().unwrap();
    assert!(
        wall <= STALL_S + HANG_MARGIN_S,
        "the hung cell took {wall} s"
    );
    let medium = r["cells"][2]["reason"].as_str().unwrap();
    assert!(medium.contains("returned 0x0c to the program"), "{medium}");
    let cell = scratch.root.join("out/lose-one/seabios");
    for file in [
        "trace.jsonl",
        "serial.log",
        "firmware.log",
        "timeline.svg",
        "result.json",
    ] {
        assert!(
            cell.join(file).is_file(),
            "{file} missing in {}",
            cell.display()
        );
    }
    assert!(
        !cell.join("disk.img").exists(),
        "the image is removed after the check"
    );
    assert!(report::markdown_path(&scratch.root.join("out")).is_file());
    assert_clean(&scratch);
}

#[test]
fn a_cell_that_differs_from_its_row_file_fails_the_card() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("card-differs");
    let rows = scratch.root.join("rows");
    std::fs::create_dir_all(&rows).unwrap();
    let baseline =
        std::fs::read_to_string(common::workspace_root().join("harness/drivers/baseline.toml"))
            .unwrap();
    let edited = baseline.replace(
        "[seabios]\noutcome = \"survived\"",
        "[seabios]\noutcome = \"hung\"",
    );
    assert_ne!(edited, baseline);
    std::fs::write(rows.join("baseline.toml"), edited).unwrap();
    let run = start(
        &scratch,
        "baseline",
        &[OsStr::new("--rows"), rows.as_os_str()],
    );
    let (status, stdout, stderr) = run.finish(Duration::from_secs(60));
    assert_eq!(status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(stdout.contains("baseline  survived !"), "{stdout}");
    assert!(
        stdout.contains("    outcome survived, expected hung"),
        "{stdout}"
    );
    assert_eq!(report(&scratch)["cells"][0]["passed"], false);
    assert_clean(&scratch);
}

#[test]
fn an_interrupt_during_a_hung_cell_ends_the_card_and_leaves_nothing() {
    let _one = ONE_GUEST.lock().unwrap_or_else(|e| e.into_inner());
    let scratch = Scratch::new("card-sigint");
    let mut run = start(&scratch, "lose-one", &[]);
    run.wait_line("accel:", Duration::from_secs(20));
    // SeaBIOS is waiting for its lost read: QEMU runs, the watcher has not given up yet.
    for _ in 0..500 {
        let found = common::processes_mentioning(&scratch.tmpdir());
        if found.iter().any(|(_, c)| c.contains("qemu-system")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_secs(2));
    run.signal(libc::SIGINT);
    let (status, stdout, stderr) = run.finish(Duration::from_secs(10));
    assert_eq!(status.code(), Some(130), "{stdout}\n{stderr}");
    assert!(stdout.contains("drivers: INTERRUPTED: 0 cells"), "{stdout}");
    assert_eq!(report(&scratch)["interrupted"], true);
    assert_clean(&scratch);
}
