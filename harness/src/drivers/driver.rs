//! What the card needs of a driver: where its workload's I/O lies (so that faults hit the
//! workload, not the driver's boot I/O), its own command timeout, how it is booted and
//! how long it may take, and how its outcome is read from what a cell left.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::launch::boot::{GuestExit, RunError};
use crate::launch::qemu::Guest;
use crate::launch::rundir::create_sparse;
use crate::launch::serial::SerialLine;
use crate::scenario::expect::Metrics;

use super::outcome::Verdict;

/// The drivers of the card, in its column order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum DriverId {
    /// This project's miniport (the guest image).
    Miniport,
    /// Linux's virtio_scsi (the stock Debian guest).
    Linux,
    /// SeaBIOS's virtio-scsi boot driver (QEMU's default BIOS).
    Seabios,
    /// OVMF's VirtioScsiDxe.
    Ovmf,
}

impl DriverId {
    pub const ALL: [DriverId; 4] = [
        DriverId::Miniport,
        DriverId::Linux,
        DriverId::Seabios,
        DriverId::Ovmf,
    ];

    /// The name in row files, directories and reports.
    pub fn name(self) -> &'static str {
        match self {
            DriverId::Miniport => "miniport",
            DriverId::Linux => "linux",
            DriverId::Seabios => "seabios",
            DriverId::Ovmf => "ovmf",
        }
    }

    /// What the driver is, for the report.
    pub fn title(self) -> &'static str {
        match self {
            DriverId::Miniport => "our miniport (guest image)",
            DriverId::Linux => "Linux virtio_scsi",
            DriverId::Seabios => "SeaBIOS virtio-scsi",
            DriverId::Ovmf => "OVMF VirtioScsiDxe",
        }
    }
}

impl fmt::Display for DriverId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a driver's workload does its I/O, and its own limits: what the row files'
/// placeholders stand for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    /// LBAs (inclusive) of LUN 0 that the workload reads and writes and nothing else
    /// touches: `{data}`.
    pub data: (u64, u64),
    /// A few blocks inside `data` that the workload reads but its check that the disk
    /// still works after an error does not: `{bad}`, where a medium error or BUSY goes.
    pub bad: (u64, u64),
    /// The driver's own command timeout as the card sets it; None: it has none.
    pub timeout: Option<Duration>,
}

/// A delay the row "past the driver's timeout" uses when the driver has none.
pub const DELAY_WITHOUT_TIMEOUT: Duration = Duration::from_secs(3);
/// How far past the driver's own timeout that row's delay goes.
pub const PAST_TIMEOUT: Duration = Duration::from_secs(2);

impl Profile {
    /// The value of a row file's `{placeholder}`, as the fault shorthands write it.
    pub fn placeholder(&self, name: &str) -> Option<String> {
        let range = |(a, b): (u64, u64)| format!("{a}..{b}");
        match name {
            "data" => Some(range(self.data)),
            "bad" => Some(range(self.bad)),
            "past_timeout_ms" => {
                let delay = self
                    .timeout
                    .map_or(DELAY_WITHOUT_TIMEOUT, |t| t + PAST_TIMEOUT);
                Some(delay.as_millis().to_string())
            }
            _ => None,
        }
    }
}

/// A change of the backend's LUs while the workload runs: LUN 1 appears or goes, or
/// LUN 0 grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LuChange {
    Add,
    Remove,
    Resize,
}

impl LuChange {
    pub fn from_word(word: &str) -> Option<LuChange> {
        match word {
            "add" => Some(LuChange::Add),
            "remove" => Some(LuChange::Remove),
            "resize" => Some(LuChange::Resize),
            _ => None,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            LuChange::Add => "add",
            LuChange::Remove => "remove",
            LuChange::Resize => "resize",
        }
    }
}

/// What a driver is given to boot one cell.
pub struct CellSetup<'a> {
    /// The cell's directory: logs, images, the trace.
    pub dir: &'a Path,
    /// The LU change of the row, if any.
    pub lu: Option<LuChange>,
}

/// What a cell left, for the driver to read.
pub struct Evidence<'a> {
    pub lines: &'a [SerialLine],
    pub exit: GuestExit,
    /// LUN 0's image after the run.
    pub disk: &'a Path,
    /// LUN 0's size in blocks after a resize (the backend's reply).
    pub resized_to: Option<u64>,
}

/// A driver's reading of its cell: its verdict and the metrics of its own output.
#[derive(Clone, Debug)]
pub struct Reading {
    pub verdict: Verdict,
    /// `guest.*` (miniport), `linux.*`, `fw.*`, `image.*`: for a row's expectations.
    pub metrics: Metrics,
}

/// A fresh sparse image of `bytes` bytes, `dir/disk.img`: LUN 0 of the drivers whose
/// workload brings its own data.
pub fn sparse_disk(dir: &Path, bytes: u64) -> Result<PathBuf, RunError> {
    let disk = dir.join("disk.img");
    create_sparse(&disk, bytes).map_err(|e| RunError::CouldNotPrepare(disk.clone(), e))?;
    Ok(disk)
}

/// One driver of the card.
pub trait Driver {
    fn id(&self) -> DriverId;
    fn profile(&self) -> Profile;
    /// From QEMU's start to the driver's first SCSI command, at most.
    fn boot_allowance(&self) -> Duration;
    /// The longest a cell may run in all.
    fn deadline(&self) -> Duration;
    /// Writes LUN 0's image into `dir` (a copy of a pristine image, or a fresh sparse
    /// file) and returns its path.
    fn prepare_disk(&self, dir: &Path) -> Result<PathBuf, RunError>;
    /// Backend arguments besides the LUNs, the trace, the faults and the control socket.
    fn backend_args(&self) -> Vec<String> {
        Vec::new()
    }
    /// How QEMU boots the driver for this cell.
    fn guest(&self, setup: &CellSetup<'_>) -> Result<Guest, RunError>;
    /// The driver's verdict on what the cell left.
    fn read(&self, evidence: &Evidence<'_>) -> Result<Reading, RunError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_follow_the_profile() {
        let mut p = Profile {
            data: (8192, 12351),
            bad: (8208, 8215),
            timeout: None,
        };
        assert_eq!(p.placeholder("data").as_deref(), Some("8192..12351"));
        assert_eq!(p.placeholder("bad").as_deref(), Some("8208..8215"));
        assert_eq!(p.placeholder("past_timeout_ms").as_deref(), Some("3000"));
        p.timeout = Some(Duration::from_secs(5));
        assert_eq!(p.placeholder("past_timeout_ms").as_deref(), Some("7000"));
        assert_eq!(p.placeholder("nope"), None);
    }

    #[test]
    fn names_and_lu_changes_are_words() {
        let names: Vec<_> = DriverId::ALL.iter().map(|d| d.name()).collect();
        assert_eq!(names, ["miniport", "linux", "seabios", "ovmf"]);
        for w in ["add", "remove", "resize"] {
            assert_eq!(LuChange::from_word(w).map(LuChange::word), Some(w));
        }
        assert_eq!(LuChange::from_word("grow"), None);
    }
}
