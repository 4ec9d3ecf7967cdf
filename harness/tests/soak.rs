//! The data-integrity soak (issue 13): a short run with every disturbance, the
//! `soak` subcommand, and proof that its checks can fail: blocks planted in the image
//! behind the backend's back (torn, lost, stale, misplaced) are caught, naming the LBA,
//! the stamp expected and the one found.

mod common;

use std::os::unix::fs::FileExt;
use std::process::Command;
use std::time::{Duration, Instant};

use flakyhba_harness::soak::model::Mismatch;
use flakyhba_harness::soak::stamp::{stamp, Found, BLOCK};
use flakyhba_harness::soak::{verify_image, Pace, Soak, SoakError, SoakOptions, NEVER};

fn ms(a: u64, b: u64) -> (Duration, Duration) {
    (Duration::from_millis(a), Duration::from_millis(b))
}

/// Everything, many times a second.
fn options(seed: u64) -> SoakOptions {
    SoakOptions {
        duration: Duration::from_secs(4),
        backend: common::backend(),
        queues: 3,
        queue_depth: 8,
        lun_bytes: 1 << 20,
        max_blocks: 32,
        read_percent: 40,
        seed,
        keep: None,
        pace: Pace {
            fault_switch: ms(20, 80),
            lu_reset: ms(150, 300),
            device_reset: ms(300, 600),
            reconnect: ms(400, 800),
            kill: ms(1000, 1400),
            checkpoint: ms(700, 1200),
        },
        progress: Duration::from_secs(3600),
    }
}

#[test]
fn a_short_soak_with_every_disturbance_loses_nothing() {
    let opts = options(7);
    // Until each disturbance came a few times (some 4 s; more on a loaded machine).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut soak = Soak::start(opts).unwrap();
    loop {
        soak.run_until(Instant::now() + Duration::from_millis(250), &mut |_| ())
            .unwrap();
        let c = soak.counts().unwrap();
        let resets = c.device_resets >= 3 && c.io.lu_resets >= 3;
        let enough = c.kills >= 2 && c.reconnects >= 2 && resets;
        if enough && c.fault_switches >= 20 || Instant::now() >= deadline {
            break;
        }
    }
    let c = soak.finish().unwrap();
    assert!(c.kills >= 2, "{c}");
    assert!(c.device_resets >= 3 && c.reconnects >= 2, "{c}");
    assert!(c.io.lu_resets >= 3, "{c}");
    assert!(c.faults_injected > 0 && c.fault_switches >= 20, "{c}");
    assert!(c.io.acknowledged > 100 && c.io.blocks_read > 100, "{c}");
    // A checkpoint after each kill, and the final one; each and the image saw every block.
    assert!(c.checkpoints > c.kills, "{c}");
    assert_eq!(c.blocks_verified, (c.checkpoints + 1) * 2048, "{c}");
}

#[test]
fn soak_subcommand_runs_and_reports_its_counts() {
    let stdout = common::succeed(
        Command::new(common::HARNESS)
            .args(["soak", "--minutes", "0.04", "--progress", "1"])
            .args(["--lun-size", "1M", "--backend"])
            .arg(common::backend()),
    );
    assert!(
        stdout.starts_with("soak: 0.0 min, 4 queues x QD8, 1 MiB LUN, seed 1\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("soak 0:01 of 0:02: faults injected "),
        "{stdout}"
    );
    assert!(
        stdout.contains("\nsoak passed: faults injected "),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with(", 0 lost or torn"), "{stdout}");
}

fn read_block(image: &std::path::Path, lba: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    let f = std::fs::File::open(image).unwrap();
    f.read_exact_at(&mut b, lba * BLOCK as u64).unwrap();
    b
}

fn write_block(image: &std::path::Path, lba: u64, data: &[u8]) {
    let f = std::fs::OpenOptions::new().write(true).open(image).unwrap();
    f.write_all_at(data, lba * BLOCK as u64).unwrap();
}

fn caught(r: Result<(), SoakError>) -> Mismatch {
    match r {
        Err(SoakError::Lost(m)) => *m,
        other => panic!("the planted block went unnoticed: {other:?}"),
    }
}

#[test]
fn blocks_planted_behind_the_backends_back_are_caught() {
    let mut opts = options(11);
    // No kills here: the planted block must be the only thing wrong.
    opts.pace.kill = NEVER;
    let end = Instant::now() + Duration::from_millis(1500);
    let mut soak = Soak::start(opts).unwrap();
    soak.run_until(end, &mut |_| ()).unwrap();
    soak.checkpoint().unwrap();
    // A block a write was acknowledged (or read back) for, not the zeroes it began as.
    let blocks = soak.model().blocks();
    let lba = (0..blocks)
        .rev()
        .find(|&l| soak.model().known(l) > 1)
        .expect("written blocks");
    let generation = soak.model().known(lba);
    let image = soak.image().to_owned();
    let good = read_block(&image, lba);

    let mut stale = vec![0u8; BLOCK];
    stamp(&mut stale, lba, generation - 1);
    let mut misplaced = vec![0u8; BLOCK];
    stamp(&mut misplaced, lba + 1, generation);
    let mut torn = good.clone();
    torn[256..].copy_from_slice(&stale[256..]);
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("torn", torn, "no whole stamp"),
        ("lost", vec![0u8; BLOCK], "found zeroes (generation 0)"),
        (
            "lost",
            stale,
            &format!("found the stamp of LBA {lba} generation {}", generation - 1),
        ),
        (
            "misplaced",
            misplaced,
            &format!("found the stamp of LBA {} generation {generation}", lba + 1),
        ),
    ];
    for (kind, planted, found) in cases {
        write_block(&image, lba, &planted);
        // Through the backend (a checkpoint) ...
        let m = caught(soak.checkpoint());
        assert_eq!((m.lba, m.kind()), (lba, kind), "{m}");
        let text = m.to_string();
        assert!(
            text.starts_with(&format!(
                "{kind} block at LBA {lba}: expected the stamp of LBA {lba} generation {generation}, "
            )) && text.contains(found),
            "{text}"
        );
        // ... and in the image file (the soak's last check, the backend stopped).
        let m = caught(verify_image(&image, &mut soak.model().clone()).map(drop));
        assert_eq!((m.lba, m.kind()), (lba, kind));
        write_block(&image, lba, &good);
        soak.checkpoint().unwrap();
    }
    let found = Found::Stamp { lba, generation };
    assert_eq!(flakyhba_harness::soak::stamp::decode(&good), found);
    let c = soak.finish().unwrap();
    assert!(c.checkpoints >= 6, "{c}");
}
