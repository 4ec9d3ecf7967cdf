//! The whole card: the row files, the drivers asked for (each checked before anything
//! starts), every cell in row order, and what ran (versions). A signal stops the card
//! after the cell that is running; the cells so far are kept.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::cell::{run_cell, CellOptions, CellRecord};
use super::driver::{Driver, DriverId};
use super::firmware::{self, Firmware};
use super::linux::LinuxCard;
use super::miniport::Miniport;
use super::rows::{self, Row, RowError};
use super::versions::Versions;
use crate::launch::binaries::{find_qemu, require, SetupError};
use crate::launch::boot::RunError;

#[derive(Debug, thiserror::Error)]
pub enum CardError {
    #[error(transparent)]
    Rows(#[from] RowError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("{0}")]
    Prepare(RunError),
    #[error("nothing to run: no cell of the rows and drivers asked for{0}")]
    Empty(&'static str),
}

#[derive(Clone, Debug)]
pub struct CardOptions {
    pub backend: PathBuf,
    pub image: PathBuf,
    pub qemu: PathBuf,
    /// linux-guest/build.sh's output directory, and the command that fills it.
    pub linux_guest: PathBuf,
    pub linux_build: String,
    /// firmware-guest/build.sh's output directory.
    pub firmware: PathBuf,
    /// Debian's OVMF images.
    pub ovmf: PathBuf,
    /// The row files.
    pub rows: PathBuf,
    pub out: PathBuf,
    /// Only these rows (all when empty).
    pub only: Vec<String>,
    /// Only these drivers (all when empty).
    pub drivers: Vec<DriverId>,
    /// Only the cells the row files mark `subset = true` (`make test`).
    pub subset: bool,
    pub keep_image: bool,
    /// The workspace root, for the commit.
    pub root: PathBuf,
}

pub struct Card {
    pub rows: Vec<Row>,
    pub drivers: Vec<DriverId>,
    pub cells: Vec<CellRecord>,
    pub versions: Versions,
    pub wall: Duration,
    pub interrupted: bool,
    pub subset: bool,
}

impl Card {
    pub fn passed(&self) -> bool {
        !self.interrupted && self.cells.iter().all(CellRecord::passed)
    }

    pub fn cell(&self, row: &str, driver: DriverId) -> Option<&CellRecord> {
        self.cells
            .iter()
            .find(|c| c.row == row && c.driver == driver)
    }
}

/// The driver behind `id`, its inputs checked (and the Linux card's initramfs written).
fn driver(id: DriverId, opts: &CardOptions) -> Result<Box<dyn Driver>, CardError> {
    let firmware = |id| -> Result<Box<dyn Driver>, CardError> {
        let disk = opts.firmware.join(firmware::DISK_FILE);
        let build = format!("{} {}", firmware::BUILD_SCRIPT, opts.firmware.display());
        require("firmware guest disk", &disk, &build)?;
        if id == DriverId::Ovmf {
            for f in [firmware::OVMF_CODE, firmware::OVMF_VARS] {
                require("OVMF image", &opts.ovmf.join(f), "apt-get install ovmf")?;
            }
        }
        Ok(Box::new(Firmware {
            id,
            disk,
            ovmf_dir: opts.ovmf.clone(),
        }))
    };
    Ok(match id {
        DriverId::Miniport => {
            require(
                "guest image",
                &opts.image,
                "make build` or `cargo build --release -p flakyhba-guest --target x86_64-unknown-none",
            )?;
            Box::new(Miniport {
                image: opts.image.clone(),
            })
        }
        DriverId::Linux => Box::new(
            LinuxCard::new(&opts.linux_guest, &opts.linux_build, &opts.out)
                .map_err(CardError::Prepare)?,
        ),
        DriverId::Seabios | DriverId::Ovmf => firmware(id)?,
    })
}

/// The cells to run, in row order: (row index, driver).
fn plan(rows: &[Row], drivers: &[DriverId], subset: bool) -> Vec<(usize, DriverId)> {
    rows.iter()
        .enumerate()
        .flat_map(|(i, r)| {
            drivers
                .iter()
                .filter(move |&&d| !subset || r.expectation(d).subset)
                .map(move |&d| (i, d))
        })
        .collect()
}

/// Runs the card, calling `progress(done, total, cell)` after each cell.
pub fn run_card(
    opts: &CardOptions,
    mut progress: impl FnMut(usize, usize, &CellRecord),
) -> Result<Card, CardError> {
    let start = Instant::now();
    let rows = rows::select(rows::load_dir(&opts.rows, &super::profiles())?, &opts.only)?;
    let ids: Vec<DriverId> = DriverId::ALL
        .into_iter()
        .filter(|d| opts.drivers.is_empty() || opts.drivers.contains(d))
        .collect();
    let cells = plan(&rows, &ids, opts.subset);
    if cells.is_empty() {
        return Err(CardError::Empty(if opts.subset {
            " in the subset"
        } else {
            ""
        }));
    }
    require(
        "backend",
        &opts.backend,
        "make build` or `cargo build --release -p flakyhba-backend",
    )?;
    let qemu = find_qemu(&opts.qemu)?;
    let mut drivers: Vec<Box<dyn Driver>> = Vec::new();
    for &id in &ids {
        if cells.iter().any(|&(_, d)| d == id) {
            drivers.push(driver(id, opts)?);
        }
    }
    let mut versions = Versions::gather(&opts.root, &qemu, &opts.linux_guest);
    let cell_opts = CellOptions {
        backend: &opts.backend,
        qemu: &qemu,
        out: &opts.out,
        keep_image: opts.keep_image,
    };
    let mut records = Vec::new();
    let mut interrupted = false;
    for (n, &(row, id)) in cells.iter().enumerate() {
        let d = drivers
            .iter()
            .find(|d| d.id() == id)
            .expect("every planned driver was made");
        match run_cell(d.as_ref(), &rows[row], &cell_opts) {
            Ok(record) => {
                progress(n + 1, cells.len(), &record);
                records.push(record);
            }
            Err(_) => {
                interrupted = true;
                break;
            }
        }
    }
    versions.kernel = records
        .iter()
        .find_map(|c| c.metrics.get("linux.kernel")?.as_str().map(str::to_owned));
    Ok(Card {
        rows,
        drivers: ids,
        cells: records,
        versions,
        wall: start.elapsed(),
        interrupted,
        subset: opts.subset,
    })
}
