//! Our miniport, as the card runs it: the guest image's `io` workload (seeded random
//! LBAs written at queue depth 8 and read back), with short SRB and TMF timeouts so that
//! a lost command costs seconds. Its result line says what the driver returned to the
//! workload; the harness checks the pattern at every LBA it wrote in the image.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use guest_miniport::contract::{result_fields as f, GuestArgs, Workload};
use serde_json::{Map, Value};

use super::driver::{sparse_disk, CellSetup, Driver, DriverId, Evidence, Profile, Reading};
use super::outcome::Verdict;
use crate::launch::boot::RunError;
use crate::launch::qemu::Guest;
use crate::launch::rundir::DISK_BYTES;
use crate::launch::serial::SerialLine;
use crate::scenario::image::{check_image, MAX_BLOCK_SIZE};
use crate::scenario::metrics::{guest_metrics, image_metrics};

/// The SRB timeout the card gives the miniport (P1).
const SRB_TIMEOUT: Duration = Duration::from_secs(2);

/// The workload touches the whole disk; the medium error covers its first 4 MiB (a
/// fraction of the random LBAs), and the workload carries on past each error.
pub const PROFILE: Profile = Profile {
    data: (0, DISK_BYTES / 512 - 1),
    bad: (0, 8191),
    timeout: Some(SRB_TIMEOUT),
};

/// What the image is told: the `io` workload with the image's defaults (queue depth 8, a
/// TMF timeout of 2 s inside the port's 4 s reset hold), and an SRB timeout short enough
/// that a lost command costs seconds.
pub fn guest_args() -> GuestArgs {
    GuestArgs {
        workload: Workload::Io,
        blocks: 128,
        srb_timeout_ms: SRB_TIMEOUT.as_millis() as u32,
        ..GuestArgs::default()
    }
}

pub struct Miniport {
    /// The guest image (PVH kernel).
    pub image: PathBuf,
}

impl Driver for Miniport {
    fn id(&self) -> DriverId {
        DriverId::Miniport
    }

    fn profile(&self) -> Profile {
        PROFILE
    }

    fn boot_allowance(&self) -> Duration {
        Duration::from_secs(10)
    }

    fn deadline(&self) -> Duration {
        Duration::from_secs(60)
    }

    fn prepare_disk(&self, dir: &Path) -> Result<PathBuf, RunError> {
        sparse_disk(dir, DISK_BYTES)
    }

    fn guest(&self, _setup: &CellSetup<'_>) -> Result<Guest, RunError> {
        Ok(Guest::Image {
            image: self.image.clone(),
            args: guest_args(),
        })
    }

    fn read(&self, ev: &Evidence<'_>) -> Result<Reading, RunError> {
        let Some(result) = ev.lines.iter().rev().find_map(SerialLine::result) else {
            return Ok(Reading {
                verdict: super::no_result(&ev.exit, None),
                metrics: Default::default(),
            });
        };
        let mut metrics = guest_metrics(result);
        let verdict = verdict(result, ev.disk, &mut metrics)?;
        Ok(Reading { verdict, metrics })
    }
}

fn number(result: &Map<String, Value>, key: &str) -> u64 {
    result.get(key).and_then(Value::as_u64).unwrap_or(0)
}

/// The verdict on a result line, adding `image.*` to `metrics`.
fn verdict(
    result: &Map<String, Value>,
    disk: &Path,
    metrics: &mut crate::scenario::expect::Metrics,
) -> Result<Verdict, RunError> {
    let reason = result
        .get(f::REASON)
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    if result.get(f::RESULT).and_then(Value::as_str) != Some("pass") {
        // The image's panic handler and CPU exception handler report through `fail`.
        if reason.starts_with("panic") || reason.starts_with("exception") {
            return Ok(Verdict::Crashed(reason));
        }
        return Ok(Verdict::Failed(format!("the workload failed: {reason}")));
    }
    let violations = number(result, f::VIOLATIONS);
    if violations > 0 {
        return Ok(Verdict::Failed(format!(
            "the port's rule checker found {violations} violation(s)"
        )));
    }
    let lbas: Vec<u64> = result
        .get(f::LBAS)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let block_size = number(result, f::BLOCK_SIZE);
    if !(1..=MAX_BLOCK_SIZE).contains(&block_size) || lbas.is_empty() {
        return Ok(Verdict::Failed(
            "the result line names no written LBAs".into(),
        ));
    }
    let err = |e| RunError::CouldNotCheckImage(disk.to_owned(), e);
    let mut image = File::open(disk).map_err(err)?;
    let args = guest_args();
    let check = check_image(&mut image, args.seed, block_size, &lbas).map_err(err)?;
    metrics.extend(image_metrics(&check, u64::from(args.blocks)));
    if !check.bad.is_empty() || check.verified != args.blocks as usize {
        return Ok(Verdict::Failed(format!(
            "the image holds {} of {} written blocks (lacking: {:?})",
            check.verified, args.blocks, check.bad
        )));
    }
    let medium = number(result, f::MEDIUM_ERRORS);
    let verified = format!(
        "{} blocks written, read back and verified in the guest and in the image",
        check.verified
    );
    if medium > 0 {
        return Ok(Verdict::ErrorReported(format!(
            "{medium} read(s) returned MEDIUM ERROR to the workload; {verified}"
        )));
    }
    Ok(Verdict::Survived(verified))
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_miniport::contract::fill_pattern;
    use std::io::{Seek, SeekFrom, Write};

    fn result(text: &str) -> Map<String, Value> {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_card_workload_is_one_the_image_accepts() {
        let args = guest_args();
        assert_eq!(GuestArgs::parse(&args.to_string()), Ok(args));
        // The miniport gives up on a TMF, and resets the device, inside the reset hold (P2).
        assert!(args.tmf_timeout_ms < args.hold_ms);
    }

    #[test]
    fn a_crash_a_failure_and_a_missing_write_are_told_apart() {
        let disk = std::env::temp_dir().join(format!("fh-miniport-{}.img", std::process::id()));
        let mut file = File::create(&disk).unwrap();
        file.set_len(1 << 20).unwrap();
        let mut m = Default::default();
        let crash = result(r#"{"result":"fail","reason":"exception 14 (page fault)"}"#);
        assert!(matches!(
            verdict(&crash, &disk, &mut m).unwrap(),
            Verdict::Crashed(_)
        ));
        let fail = result(r#"{"result":"fail","reason":"data read back from lba 7 differs"}"#);
        assert!(matches!(
            verdict(&fail, &disk, &mut m).unwrap(),
            Verdict::Failed(_)
        ));
        // Only one of the 128 LBAs holds its pattern.
        let mut block = vec![0u8; 512];
        fill_pattern(guest_args().seed, 3, &mut block);
        file.seek(SeekFrom::Start(3 * 512)).unwrap();
        file.write_all(&block).unwrap();
        let lbas: Vec<u64> = (3..131).collect();
        let pass = result(&format!(
            r#"{{"result":"pass","block_size":512,"lbas":{lbas:?},"violations":0}}"#
        ));
        let v = verdict(&pass, &disk, &mut m).unwrap();
        assert!(
            matches!(&v, Verdict::Failed(r) if r.contains("1 of 128")),
            "{v:?}"
        );
        assert_eq!(m["image.verified"], 1);
        std::fs::remove_file(&disk).unwrap();
    }
}
