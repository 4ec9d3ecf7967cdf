//! The driver card (`flakyhba-harness drivers`, `make drivers`): real drivers against the
//! flaky HBA, one fault per row (harness/drivers/NAME.toml), one driver per column: our
//! miniport, Linux's virtio_scsi, SeaBIOS's and OVMF's virtio-scsi drivers. Each cell
//! boots the driver under TCG against a backend with the row's faults, watches it (a
//! stalled cell is stopped as hung), and decides its outcome from the guest's output, the
//! trace and the image; the row file says which outcome to expect.
//!
//! A driver ([`driver::Driver`]) brings its own boot, workload and reading of the outcome;
//! [`cell`] runs one cell, [`card`] all of them, [`report`] writes the table and reports.
//! The room sits above `scenario` (expectations, metrics, timeline) and `linux` (the
//! stock guest's files), and uses `launch` for the processes.

pub mod card;
pub mod cell;
pub mod driver;
pub mod firmware;
pub mod linux;
pub mod miniport;
pub mod outcome;
pub mod outstanding;
pub mod report;
pub mod rows;
pub mod versions;
pub mod watch;

use self::driver::{DriverId, Profile};
use self::outcome::Verdict;
use crate::launch::boot::GuestExit;

/// Every driver's profile, for checking the row files before anything starts.
pub fn profiles() -> Vec<(DriverId, Profile)> {
    DriverId::ALL
        .iter()
        .map(|&d| {
            let p = match d {
                DriverId::Miniport => miniport::PROFILE,
                DriverId::Linux => linux::PROFILE,
                DriverId::Seabios | DriverId::Ovmf => firmware::PROFILE,
            };
            (d, p)
        })
        .collect()
}

/// The verdict on a guest that printed no result line: it was stopped (unfinished), or
/// QEMU exited by itself, which for a guest that reports before it powers off means it
/// reset or died (`why` says more when the driver knows).
pub fn no_result(exit: &GuestExit, why: Option<&str>) -> Verdict {
    if exit.timed_out {
        return Verdict::Unfinished;
    }
    let how = match exit.status {
        Some(s) => match s.code() {
            // -no-reboot turns a reset (a triple fault, a firmware's watchdog) into exit 0.
            Some(0) => "QEMU exited 0 without a result: the guest reset".to_owned(),
            Some(c) => format!("QEMU exited {c} without a result"),
            None => format!("QEMU died ({s}) without a result"),
        },
        None => "QEMU ended without a result".to_owned(),
    };
    Verdict::Crashed(match why {
        Some(why) => format!("{how} ({why})"),
        None => how,
    })
}
