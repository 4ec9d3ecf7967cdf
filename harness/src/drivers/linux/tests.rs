use std::io::{Seek, SeekFrom, Write};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use super::*;
use crate::launch::boot::GuestExit;

fn exit(timed_out: bool) -> GuestExit {
    GuestExit {
        status: (!timed_out).then(|| ExitStatus::from_raw(0)),
        timed_out,
        result_after: Duration::ZERO,
    }
}

fn lines(text: &str) -> Vec<SerialLine> {
    text.lines().map(SerialLine::parse).collect()
}

const STEPS: &str = "\
FLAKYHBA-STEP modules rc=0
FLAKYHBA-FACT disk=0:0:0:0 /dev/sda
FLAKYHBA-FACT size_before=131072
FLAKYHBA-FACT disks_before=0:0:0:0 0:0:0:1 
FLAKYHBA-STEP find-disk rc=0
FLAKYHBA-STEP timeout rc=0
FLAKYHBA-STEP sg_inq rc=0
FLAKYHBA-STEP sg_readcap rc=0
";

fn tail(fio: i32, lu: Option<(&str, i32)>, disks_after: &str) -> String {
    let mut t = format!("FLAKYHBA-STEP fio rc={fio}\n");
    if let Some((change, rc)) = lu {
        t.push_str(&format!("FLAKYHBA-STEP lu-{change} rc={rc}\n"));
    }
    t.push_str(&format!(
        "FLAKYHBA-FACT disks_after={disks_after}\nFLAKYHBA-FACT size_after=131072\n\
         FLAKYHBA-STEP turs-after rc=0\nFLAKYHBA-STEP reread rc=0\n"
    ));
    let result = if fio == 0 && lu.is_none_or(|(_, rc)| rc == 0) {
        r#"{"result":"pass","kernel":"6.1.0-57-amd64","failed":[]}"#
    } else {
        r#"{"result":"fail","kernel":"6.1.0-57-amd64","failed":["x"]}"#
    };
    t.push_str(result);
    t
}

/// A 64 MiB sparse image with fio's pattern in the data range (all but `skip` blocks).
fn image(name: &str, skip: Option<u64>) -> PathBuf {
    let path = std::env::temp_dir().join(format!("fh-linux-{}-{name}.img", std::process::id()));
    let mut f = File::create(&path).unwrap();
    f.set_len(DISK_BYTES).unwrap();
    for n in 0..DATA_BLOCKS / 8 {
        let offset = DATA_LBA * 512 + n * 4096;
        if Some(offset / 512) == skip {
            continue;
        }
        let block: Vec<u8> = (0..512).flat_map(|_| offset.to_le_bytes()).collect();
        f.seek(SeekFrom::Start(offset)).unwrap();
        f.write_all(&block).unwrap();
    }
    path
}

fn read(text: &str, disk: &Path, timed_out: bool) -> Reading {
    let card = LinuxCard {
        kernel: PathBuf::new(),
        initrd: PathBuf::new(),
    };
    let lines = lines(text);
    let ev = Evidence {
        lines: &lines,
        exit: exit(timed_out),
        disk,
        resized_to: None,
    };
    card.read(&ev).unwrap()
}

#[test]
fn the_command_line_carries_the_range_the_timeout_and_the_change() {
    assert_eq!(
        command_line(Some(LuChange::Add)),
        "console=ttyS0 panic=-1 oops=panic quiet rdinit=/card-init flakyhba.data=65536+2048 \
         flakyhba.timeout=5 flakyhba.lu=add"
    );
    assert!(!command_line(None).contains("flakyhba.lu"));
    assert!(
        INIT.contains("flakyhba.data=*"),
        "the init reads what the line sets"
    );
}

#[test]
fn a_clean_run_survives_only_with_the_pattern_in_the_image() {
    let good = image("good", None);
    let r = read(
        &format!("{STEPS}{}", tail(0, None, "0:0:0:0")),
        &good,
        false,
    );
    assert!(matches!(r.verdict, Verdict::Survived(_)), "{:?}", r.verdict);
    assert_eq!(r.metrics["image.verified"], DATA_BLOCKS / 8);
    assert_eq!(r.metrics["linux.step.fio"], 0);
    assert_eq!(r.metrics["linux.size_before"], 131072);
    assert_eq!(r.metrics["linux.kernel"], "6.1.0-57-amd64");
    let hole = image("hole", Some(DATA_LBA + 8));
    let r = read(
        &format!("{STEPS}{}", tail(0, None, "0:0:0:0")),
        &hole,
        false,
    );
    assert!(
        matches!(&r.verdict, Verdict::Failed(w) if w.contains("1 of 256") && w.contains("65544")),
        "{:?}",
        r.verdict
    );
    std::fs::remove_file(good).unwrap();
    std::fs::remove_file(hole).unwrap();
}

#[test]
fn a_fio_error_with_a_working_disk_after_it_is_reported() {
    let text = format!(
        "{STEPS}+ fio --verify=pattern\nfio: io_u error on file /dev/sda: No data available: read offset=33562624\n{}",
        tail(1, None, "0:0:0:0")
    );
    let r = read(&text, Path::new("/nonexistent"), false);
    assert!(
        matches!(&r.verdict, Verdict::ErrorReported(w) if w.contains("(fio: io_u error on file /dev/sda: No data")),
        "{:?}",
        r.verdict
    );
}

#[test]
fn a_lu_change_linux_did_not_follow_fails_with_what_it_saw() {
    let text = format!(
        "{STEPS}{}",
        tail(0, Some(("add", 1)), "0:0:0:0 0:0:0:16385 ")
    );
    let r = read(&text, Path::new("/nonexistent"), false);
    let Verdict::Failed(why) = &r.verdict else {
        panic!("{:?}", r.verdict)
    };
    assert!(why.starts_with("lu-add: Linux did not follow"), "{why}");
    assert!(why.contains("after: 0:0:0:0 0:0:0:16385"), "{why}");
}

#[test]
fn a_panic_crashes_and_silence_is_unfinished() {
    let text = format!("{STEPS}[ 9.1] Kernel panic - not syncing: Fatal exception\n");
    let r = read(&text, Path::new("/nonexistent"), false);
    assert!(matches!(&r.verdict, Verdict::Crashed(w) if w.contains("Kernel panic")));
    let r = read(STEPS, Path::new("/nonexistent"), true);
    assert_eq!(r.verdict, Verdict::Unfinished);
    let r = read(STEPS, Path::new("/nonexistent"), false);
    assert!(
        matches!(r.verdict, Verdict::Crashed(_)),
        "exited without a result"
    );
}
