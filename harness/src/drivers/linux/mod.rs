//! Linux's virtio_scsi, as the card runs it: the stock Debian guest of linux-guest/ with
//! the card's own /card-init (card-init.sh) appended to its initramfs. It finds LUN 0,
//! runs sg3_utils, has fio write and verify a 1 MiB range with a pattern the harness can
//! check in the image, follows the row's LU change, and checks that the disk still works.

pub mod overlay;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

use super::driver::{
    sparse_disk, CellSetup, Driver, DriverId, Evidence, LuChange, Profile, Reading,
};
use super::outcome::Verdict;
use crate::launch::binaries::require;
use crate::launch::boot::RunError;
use crate::launch::qemu::Guest;
use crate::launch::serial::SerialLine;
use crate::linux::verdict::StepResult;
use crate::linux::{linux_guest, INITRD_FILE, KERNEL_FILE};
use crate::scenario::expect::Metrics;

/// fio's range: 1 MiB at 32 MiB, far from what the kernel's partition scan reads.
pub const DATA_LBA: u64 = 65_536;
pub const DATA_BLOCKS: u64 = 2048;
/// LUN 0: room for the data range, and for a resize to grow it.
pub const DISK_BYTES: u64 = 64 << 20;
/// The SCSI command timeout the card sets (/sys/block/sdX/device/timeout).
pub const SCSI_TIMEOUT: Duration = Duration::from_secs(5);

/// The medium error hits the range's third 4 KiB block; the reread after fio reads the
/// first.
pub const PROFILE: Profile = Profile {
    data: (DATA_LBA, DATA_LBA + DATA_BLOCKS - 1),
    bad: (DATA_LBA + 16, DATA_LBA + 23),
    timeout: Some(SCSI_TIMEOUT),
};

/// The card's init, and its name in the initramfs (`rdinit=`).
const INIT: &str = include_str!("card-init.sh");
const INIT_NAME: &str = "card-init";
/// The card's initramfs, written once per card run into its output directory.
pub const CARD_INITRD: &str = "linux-card-initrd.img";
/// What the kernel prints when it dies (with `oops=panic` an oops panics, and QEMU
/// exits through -no-reboot).
const CRASH_MARKERS: &[&str] = &["Kernel panic", "Oops", "BUG: ", "general protection fault"];
/// The marker of a fact line.
const FACT_MARKER: &str = "FLAKYHBA-FACT ";

pub struct LinuxCard {
    kernel: PathBuf,
    initrd: PathBuf,
}

impl LinuxCard {
    /// linux-guest's kernel and initramfs in `guest_dir` (else the command that builds
    /// them), with the card's initramfs written into `out`.
    pub fn new(guest_dir: &Path, build_command: &str, out: &Path) -> Result<LinuxCard, RunError> {
        let kernel = guest_dir.join(KERNEL_FILE);
        let base = guest_dir.join(INITRD_FILE);
        require("Linux kernel", &kernel, build_command)?;
        require("Linux initramfs", &base, build_command)?;
        let initrd = out.join(CARD_INITRD);
        std::fs::create_dir_all(out)
            .and_then(|_| overlay::append(&base, &[(INIT_NAME, 0o755, INIT.as_bytes())], &initrd))
            .map_err(|e| RunError::CouldNotPrepare(initrd.clone(), e))?;
        Ok(LinuxCard { kernel, initrd })
    }
}

/// The kernel command line of a cell.
pub fn command_line(lu: Option<LuChange>) -> String {
    let mut line = format!(
        "console=ttyS0 panic=-1 oops=panic quiet rdinit=/{INIT_NAME} flakyhba.data={DATA_LBA}+{DATA_BLOCKS} flakyhba.timeout={}",
        SCSI_TIMEOUT.as_secs()
    );
    if let Some(lu) = lu {
        line.push_str(&format!(" flakyhba.lu={}", lu.word()));
    }
    line
}

impl Driver for LinuxCard {
    fn id(&self) -> DriverId {
        DriverId::Linux
    }

    fn profile(&self) -> Profile {
        PROFILE
    }

    /// The PVH boot reaches its first SCSI command in about 5 s under TCG; more on a
    /// loaded machine.
    fn boot_allowance(&self) -> Duration {
        Duration::from_secs(60)
    }

    fn deadline(&self) -> Duration {
        Duration::from_secs(300)
    }

    fn prepare_disk(&self, dir: &Path) -> Result<PathBuf, RunError> {
        sparse_disk(dir, DISK_BYTES)
    }

    fn guest(&self, setup: &CellSetup<'_>) -> Result<Guest, RunError> {
        Ok(linux_guest(
            self.kernel.clone(),
            self.initrd.clone(),
            command_line(setup.lu),
            1,
        ))
    }

    fn read(&self, ev: &Evidence<'_>) -> Result<Reading, RunError> {
        let logs: Vec<&str> = ev
            .lines
            .iter()
            .filter_map(|l| match l {
                SerialLine::Log(t) => Some(t.as_str()),
                SerialLine::Report(_) => None,
            })
            .collect();
        let out = Output::parse(&logs);
        let mut metrics = out.metrics();
        let crash = logs
            .iter()
            .find(|t| CRASH_MARKERS.iter().any(|m| t.contains(m)));
        if let Some(line) = crash {
            let verdict = Verdict::Crashed(format!("the kernel says: {}", line.trim()));
            return Ok(Reading { verdict, metrics });
        }
        let Some(result) = ev.lines.iter().rev().find_map(SerialLine::result) else {
            let verdict = super::no_result(&ev.exit, None);
            return Ok(Reading { verdict, metrics });
        };
        if let Some(k) = result.get("kernel") {
            metrics.insert("linux.kernel".into(), k.clone());
        }
        let verdict = out.verdict(&logs, ev, &mut metrics)?;
        Ok(Reading { verdict, metrics })
    }
}

/// The steps and facts /card-init printed.
struct Output {
    steps: Vec<StepResult>,
    facts: BTreeMap<String, String>,
}

impl Output {
    fn parse(logs: &[&str]) -> Output {
        let facts = logs
            .iter()
            .filter_map(|t| t.find(FACT_MARKER).map(|at| &t[at + FACT_MARKER.len()..]))
            .filter_map(|f| f.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
            .collect();
        Output {
            steps: logs.iter().filter_map(|t| StepResult::parse(t)).collect(),
            facts,
        }
    }

    fn fact(&self, key: &str) -> &str {
        self.facts.get(key).map_or("", String::as_str)
    }

    /// `linux.step.NAME` (its rc), `linux.failed` and `linux.FACT`.
    fn metrics(&self) -> Metrics {
        let mut m = Metrics::new();
        for s in &self.steps {
            m.insert(format!("linux.step.{}", s.name), Value::from(s.rc));
        }
        let failed = self.failed().into_iter().map(Value::from).collect();
        m.insert("linux.failed".into(), Value::Array(failed));
        for (k, v) in &self.facts {
            let value = v
                .parse::<u64>()
                .map_or_else(|_| Value::from(v.as_str()), Value::from);
            m.insert(format!("linux.{k}"), value);
        }
        m
    }

    fn failed(&self) -> Vec<&str> {
        self.steps
            .iter()
            .filter(|s| s.rc != 0)
            .map(|s| s.name.as_str())
            .collect()
    }

    fn verdict(
        &self,
        logs: &[&str],
        ev: &Evidence<'_>,
        metrics: &mut Metrics,
    ) -> Result<Verdict, RunError> {
        let lu_step = self
            .steps
            .iter()
            .find(|s| s.name.starts_with("lu-"))
            .map(|s| s.name.as_str());
        let required = ["modules", "find-disk", "sg_inq", "sg_readcap", "fio"]
            .into_iter()
            .chain(lu_step)
            .chain(["turs-after", "reread"]);
        let missing: Vec<&str> = required
            .filter(|n| !self.steps.iter().any(|s| s.name == *n))
            .collect();
        let failed = self.failed();
        if !missing.is_empty() {
            return Ok(Verdict::Failed(format!(
                "steps failed: {failed:?}; never ran: {}",
                missing.join(", ")
            )));
        }
        if let Some(lu) = lu_step.filter(|n| failed.contains(n)) {
            return Ok(Verdict::Failed(format!(
                "{lu}: Linux did not follow the change within 6 s (SCSI disks before: {}; \
                 after: {}; size {} -> {} blocks)",
                self.fact("disks_before").trim(),
                self.fact("disks_after").trim(),
                self.fact("size_before"),
                self.fact("size_after"),
            )));
        }
        if let (Some(lu), Some(want)) = (lu_step, ev.resized_to) {
            let seen = self.fact("size_after").parse::<u64>().unwrap_or(0);
            if seen != want {
                return Ok(Verdict::Failed(format!(
                    "{lu}: sda has {seen} blocks, the backend {want}"
                )));
            }
        }
        match failed.as_slice() {
            [] => {
                let bad = check_disk(ev.disk, metrics)?;
                Ok(match bad {
                    None => Verdict::Survived(format!(
                        "fio wrote and verified {DATA_BLOCKS} blocks; the image holds them"
                    )),
                    Some(why) => Verdict::Failed(why),
                })
            }
            ["fio"] => {
                // fio's own line: "fio: io_u error on file /dev/sda: No data available: ..."
                // or a verify failure.
                let error = logs
                    .iter()
                    .find(|t| t.starts_with("fio: ") || t.starts_with("verify: "))
                    .map_or("", |t| t.trim());
                Ok(Verdict::ErrorReported(format!(
                    "fio got an error ({error}); the disk then answered TEST UNIT READY and a read"
                )))
            }
            _ => Ok(Verdict::Failed(format!(
                "steps failed: {}",
                failed.join(", ")
            ))),
        }
    }
}

/// fio's pattern in the image: every 4 KiB block holds its byte offset, a little-endian
/// u64, 512 times. Adds `image.verified` and `image.mismatches` (in 4 KiB blocks).
fn check_disk(disk: &Path, metrics: &mut Metrics) -> Result<Option<String>, RunError> {
    let err = |e| RunError::CouldNotCheckImage(disk.to_owned(), e);
    let mut image = File::open(disk).map_err(err)?;
    let mut range = vec![0u8; (DATA_BLOCKS * 512) as usize];
    std::io::Seek::seek(&mut image, std::io::SeekFrom::Start(DATA_LBA * 512)).map_err(err)?;
    image.read_exact(&mut range).map_err(err)?;
    let mut bad = Vec::new();
    for (n, block) in range.chunks_exact(4096).enumerate() {
        let offset = DATA_LBA * 512 + n as u64 * 4096;
        let want = offset.to_le_bytes();
        if !block.chunks_exact(8).all(|w| w == want) {
            bad.push(offset / 512);
        }
    }
    let blocks = range.len() / 4096;
    metrics.insert("image.verified".into(), Value::from(blocks - bad.len()));
    metrics.insert("image.mismatches".into(), Value::from(bad.len()));
    Ok(bad.first().map(|lba| {
        format!(
            "the image lacks fio's pattern in {} of {blocks} 4 KiB blocks (first at LBA {lba})",
            bad.len()
        )
    }))
}

#[cfg(test)]
mod tests;
