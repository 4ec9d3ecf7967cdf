//! The firmwares' virtio-scsi drivers: SeaBIOS (QEMU's default BIOS) booting the
//! firmware guest's MBR, and OVMF booting its BOOTX64.EFI (firmware-guest/). Both read the
//! stamped pattern range, write the write range with a generation of their own and read
//! it back, and report JSON lines on COM1 (`{"fw":...}`); the harness then checks the
//! stamps in the image itself.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::Duration;

use flakyhba_efi_guest::layout::{
    BLOCK_SIZE, CHUNK_BLOCKS, IMAGE_GEN, PATTERN_BLOCKS, PATTERN_LBA, WRITE_BLOCKS, WRITE_LBA,
};
use flakyhba_efi_guest::stamp;
use serde_json::{Map, Value};

use super::driver::{CellSetup, Driver, DriverId, Evidence, Profile, Reading};
use super::outcome::Verdict;
use crate::launch::boot::RunError;
use crate::launch::qemu::{FirmwareBoot, Guest};
use crate::launch::serial::SerialLine;
use crate::scenario::expect::Metrics;

/// What build.sh leaves in its output directory: the pristine disk both firmwares boot.
pub const DISK_FILE: &str = "disk.img";
pub const BUILD_SCRIPT: &str = "firmware-guest/build.sh";
/// Debian's OVMF: the code (read-only) and the variable store each cell gets a copy of.
pub const OVMF_CODE: &str = "OVMF_CODE.fd";
pub const OVMF_VARS: &str = "OVMF_VARS.fd";

/// Both read the pattern range and write the write range; the medium error goes to the
/// pattern's third chunk, which the reread after a failure (its first chunk) avoids.
/// Neither has a command timeout: they wait on the used ring for ever.
pub const PROFILE: Profile = Profile {
    data: (PATTERN_LBA, WRITE_LBA + WRITE_BLOCKS - 1),
    bad: (
        PATTERN_LBA + 2 * CHUNK_BLOCKS,
        PATTERN_LBA + 3 * CHUNK_BLOCKS - 1,
    ),
    timeout: None,
};

pub struct Firmware {
    /// [`DriverId::Seabios`] or [`DriverId::Ovmf`]; its name is the `fw` value of the
    /// program's lines.
    pub id: DriverId,
    /// build.sh's disk image, copied for every cell.
    pub disk: PathBuf,
    /// OVMF's images (unused for SeaBIOS).
    pub ovmf_dir: PathBuf,
}

impl Driver for Firmware {
    fn id(&self) -> DriverId {
        self.id
    }

    fn profile(&self) -> Profile {
        PROFILE
    }

    /// SeaBIOS sends its first command within 0.1 s under TCG, OVMF within about 4 s.
    fn boot_allowance(&self) -> Duration {
        if self.id == DriverId::Ovmf {
            Duration::from_secs(40)
        } else {
            Duration::from_secs(10)
        }
    }

    fn deadline(&self) -> Duration {
        Duration::from_secs(120)
    }

    fn prepare_disk(&self, dir: &Path) -> Result<PathBuf, RunError> {
        let disk = dir.join("disk.img");
        std::fs::copy(&self.disk, &disk).map_err(|e| RunError::CouldNotPrepare(disk.clone(), e))?;
        Ok(disk)
    }

    fn guest(&self, setup: &CellSetup<'_>) -> Result<Guest, RunError> {
        let mut pflash = Vec::new();
        if self.id == DriverId::Ovmf {
            let vars = setup.dir.join("vars.fd");
            std::fs::copy(self.ovmf_dir.join(OVMF_VARS), &vars)
                .map_err(|e| RunError::CouldNotPrepare(vars.clone(), e))?;
            pflash.push((self.ovmf_dir.join(OVMF_CODE), true));
            pflash.push((vars, false));
        }
        Ok(Guest::Firmware(FirmwareBoot {
            pflash,
            debug_log: setup.dir.join("firmware.log"),
        }))
    }

    fn read(&self, ev: &Evidence<'_>) -> Result<Reading, RunError> {
        let lines: Vec<&Map<String, Value>> = ev
            .lines
            .iter()
            .filter_map(|l| match l {
                SerialLine::Report(m)
                    if m.get("fw").and_then(Value::as_str) == Some(self.id.name()) =>
                {
                    Some(m)
                }
                _ => None,
            })
            .collect();
        let mut metrics = line_metrics(&lines);
        let Some(result) = lines.iter().rev().find(|m| m.contains_key("result")) else {
            let started = lines
                .iter()
                .any(|m| m.get("ev").and_then(Value::as_str) == Some("start"));
            let why = (!started).then_some("the program never started");
            return Ok(Reading {
                verdict: super::no_result(&ev.exit, why),
                metrics,
            });
        };
        let verdict = verdict(result, &lines, ev.disk, &mut metrics)?;
        Ok(Reading { verdict, metrics })
    }
}

fn text<'a>(m: &'a Map<String, Value>, key: &str) -> &'a str {
    m.get(key).and_then(Value::as_str).unwrap_or("")
}

/// `fw.*`: every field of the result line, and the error and mismatch lines counted.
fn line_metrics(lines: &[&Map<String, Value>]) -> Metrics {
    let mut m = Metrics::new();
    let of = |ev: &'static str| lines.iter().filter(move |l| text(l, "ev") == ev);
    m.insert(
        "fw.started".into(),
        Value::Bool(of("start").next().is_some()),
    );
    m.insert("fw.errors".into(), Value::from(of("error").count()));
    let codes: Vec<Value> = of("error").map(|l| Value::from(text(l, "code"))).collect();
    m.insert("fw.error_codes".into(), Value::Array(codes));
    let steps: Vec<Value> = of("error").map(|l| Value::from(text(l, "step"))).collect();
    m.insert("fw.error_steps".into(), Value::Array(steps));
    m.insert("fw.mismatches".into(), Value::from(of("mismatch").count()));
    if let Some(result) = lines.iter().rev().find(|l| l.contains_key("result")) {
        for (k, v) in result.iter().filter(|(k, _)| *k != "fw") {
            m.insert(format!("fw.{k}"), v.clone());
        }
    }
    m
}

/// The verdict on a result line, adding `image.*` to `metrics`.
fn verdict(
    result: &Map<String, Value>,
    lines: &[&Map<String, Value>],
    disk: &Path,
    metrics: &mut Metrics,
) -> Result<Verdict, RunError> {
    if text(result, "result") == "pass" {
        let generation = u32::from_str_radix(text(result, "gen").trim_start_matches("0x"), 16);
        let Ok(generation) = generation else {
            return Ok(Verdict::Failed("the result line has no generation".into()));
        };
        let bad = check_disk(disk, generation, metrics)?;
        return Ok(match bad {
            None => Verdict::Survived(format!(
                "{PATTERN_BLOCKS} blocks read, {WRITE_BLOCKS} written and read back, verified \
                 in the guest and in the image"
            )),
            Some(why) => Verdict::Failed(why),
        });
    }
    let step = text(result, "failed_step");
    if let Some(m) = lines.iter().find(|l| text(l, "ev") == "mismatch") {
        return Ok(Verdict::Failed(format!(
            "wrong data at {}: LBA {} slot {} holds LBA {} generation {} (wanted {})",
            text(m, "step"),
            m["lba"],
            m["slot"],
            m["found_lba"],
            text(m, "found_gen"),
            text(m, "want_gen")
        )));
    }
    let Some(error) = lines.iter().find(|l| text(l, "ev") == "error") else {
        return Ok(Verdict::Failed(format!(
            "the program could not run its test: it failed at {step}"
        )));
    };
    let call = match (error.get("lba"), error.get("blocks")) {
        (Some(lba), Some(n)) => format!("{} of LBA {lba}+{n}", text(error, "step")),
        _ => text(error, "step").to_owned(),
    };
    let status = match text(error, "status") {
        "" => text(error, "code").to_owned(),
        name => name.to_owned(),
    };
    match result.get("reread_ok").and_then(Value::as_bool) {
        Some(true) => Ok(Verdict::ErrorReported(format!(
            "{call} returned {status} to the program; the reread after it worked"
        ))),
        Some(false) => Ok(Verdict::Failed(format!(
            "{call} returned {status}; then the reread failed too: the disk no longer works"
        ))),
        None => Ok(Verdict::Failed(format!(
            "{call} returned {status} before the disk was found"
        ))),
    }
}

/// The stamps in the image after a pass: the pattern range unchanged, the write range of
/// the run's generation. Adds `image.verified` and `image.mismatches`; says what is wrong.
fn check_disk(
    disk: &Path,
    generation: u32,
    metrics: &mut Metrics,
) -> Result<Option<String>, RunError> {
    let err = |e| RunError::CouldNotCheckImage(disk.to_owned(), e);
    let mut image = File::open(disk).map_err(err)?;
    let mut bad = Vec::new();
    let mut verified = 0u64;
    for (first, blocks, gen) in [
        (PATTERN_LBA, PATTERN_BLOCKS, IMAGE_GEN as u32),
        (WRITE_LBA, WRITE_BLOCKS, generation),
    ] {
        let mut buf = vec![0u8; blocks as usize * BLOCK_SIZE];
        image
            .seek(SeekFrom::Start(first * BLOCK_SIZE as u64))
            .and_then(|_| image.read_exact(&mut buf))
            .map_err(err)?;
        for (n, block) in buf.chunks_exact(BLOCK_SIZE).enumerate() {
            match stamp::check(block, first + n as u64, gen) {
                Ok(()) => verified += 1,
                Err(m) => bad.push(m),
            }
        }
    }
    metrics.insert("image.verified".into(), Value::from(verified));
    metrics.insert("image.mismatches".into(), Value::from(bad.len()));
    Ok(bad.first().map(|m| {
        format!(
            "the image lacks {} block(s): LBA {} holds LBA {} generation {:#x}",
            bad.len(),
            m.lba,
            m.found_lba,
            m.found_gen
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn line(text: &str) -> Map<String, Value> {
        serde_json::from_str(text).unwrap()
    }

    fn judge(lines: &[&str], disk: &Path) -> (Verdict, Metrics) {
        let maps: Vec<Map<String, Value>> = lines.iter().map(|l| line(l)).collect();
        let refs: Vec<&Map<String, Value>> = maps.iter().collect();
        let mut m = line_metrics(&refs);
        let result = refs.last().unwrap();
        (verdict(result, &refs, disk, &mut m).unwrap(), m)
    }

    /// An image stamped as build.sh leaves it, with the write range of `generation`.
    fn image(generation: u32) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("fh-fw-{}-{generation:x}.img", std::process::id()));
        let mut f = File::create(&path).unwrap();
        for (first, n, gen) in [
            (PATTERN_LBA, PATTERN_BLOCKS, IMAGE_GEN as u32),
            (WRITE_LBA, WRITE_BLOCKS, generation),
        ] {
            let mut buf = vec![0u8; n as usize * BLOCK_SIZE];
            stamp::fill(&mut buf, first, gen);
            f.seek(SeekFrom::Start(first * BLOCK_SIZE as u64)).unwrap();
            f.write_all(&buf).unwrap();
        }
        path
    }

    #[test]
    fn a_pass_is_checked_in_the_image() {
        let disk = image(0x8000_0007);
        let pass = r#"{"fw":"ovmf","result":"pass","read_blocks":64,"written_blocks":64,"verified_blocks":64,"gen":"0x80000007"}"#;
        let (v, m) = judge(&[pass], &disk);
        assert!(matches!(v, Verdict::Survived(_)), "{v:?}");
        assert_eq!(m["image.verified"], PATTERN_BLOCKS + WRITE_BLOCKS);
        assert_eq!(m["fw.read_blocks"], 64);
        // A generation the image does not hold: the writes never landed.
        let (v, m) = judge(&[&pass.replace("80000007", "80000008")], &disk);
        assert!(
            matches!(&v, Verdict::Failed(r) if r.contains("generation 0x80000007")),
            "{v:?}"
        );
        assert_eq!(m["image.mismatches"], WRITE_BLOCKS);
        std::fs::remove_file(&disk).unwrap();
    }

    #[test]
    fn an_error_is_reported_only_when_the_disk_works_after_it() {
        let none = Path::new("/nonexistent");
        let error =
            r#"{"fw":"seabios","ev":"error","step":"read","lba":8208,"blocks":8,"code":"0x0c"}"#;
        let fail = r#"{"fw":"seabios","result":"fail","failed_step":"read","read_blocks":16,"written_blocks":0,"verified_blocks":0,"gen":"0x80000001","reread_ok":true}"#;
        let (v, m) = judge(&[error, fail], none);
        assert_eq!(
            v,
            Verdict::ErrorReported(
                "read of LBA 8208+8 returned 0x0c to the program; the reread after it worked"
                    .into()
            )
        );
        assert_eq!(m["fw.errors"], 1);
        assert_eq!(m["fw.error_codes"], serde_json::json!(["0x0c"]));
        let dead = fail.replace("true", "false");
        let (v, _) = judge(&[error, &dead], none);
        assert!(
            matches!(&v, Verdict::Failed(r) if r.contains("no longer works")),
            "{v:?}"
        );
        let mismatch = r#"{"fw":"ovmf","ev":"mismatch","step":"readback","lba":12290,"slot":0,"want_gen":"0x80000001","found_tag":"0x41424846","found_lba":12290,"found_gen":"0x1","found_slot":0}"#;
        let (v, _) = judge(&[mismatch, fail], none);
        assert!(
            matches!(&v, Verdict::Failed(r) if r.starts_with("wrong data at readback")),
            "{v:?}"
        );
    }

    #[test]
    fn the_faults_aim_inside_the_test_ranges() {
        let (first, last) = PROFILE.data;
        assert!(first <= PROFILE.bad.0 && PROFILE.bad.1 <= last);
        assert!(
            PROFILE.bad.0 >= PATTERN_LBA + CHUNK_BLOCKS,
            "the reread's chunk is clean"
        );
    }
}
