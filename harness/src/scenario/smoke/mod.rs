//! One smoke run: backend, then QEMU with the guest image, then the verdict.

pub mod verdict;

use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use guest_miniport::contract::{GuestArgs, Workload};

use self::verdict::{judge_smoke, SmokeParams, Verdict};
use crate::launch::accel::{self, Accel, AccelChoice, KVM_DEVICE};
use crate::launch::binaries::{check_binaries, Binaries};
use crate::launch::boot::{backend_command, run_in_dir, Boot, RunError, RunFailure};
use crate::launch::qemu::{self, QemuConfig};
use crate::launch::rundir::{RunDir, DISK_BYTES};
use crate::launch::signals;

#[derive(Clone, Debug)]
pub struct SmokeOptions {
    pub irq: bool,
    pub accel: AccelChoice,
    pub seed: u64,
    pub blocks: u32,
    pub backend: PathBuf,
    pub image: PathBuf,
    pub qemu: PathBuf,
    pub timeout: Duration,
    pub keep: Option<PathBuf>,
}

/// A passed run.
#[derive(Debug)]
pub struct SmokeReport {
    pub irq: bool,
    pub accel: Accel,
    pub boot_to_result: Duration,
    pub verdict: Verdict,
}

impl fmt::Display for SmokeReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "smoke irq={} accel={}: PASS boot-to-result {:.2} s",
            on_off(self.irq),
            self.accel,
            self.boot_to_result.as_secs_f64()
        )?;
        if let Some(us) = self.verdict.guest_elapsed_us {
            write!(f, " (guest {:.2} s)", us as f64 / 1e6)?;
        }
        write!(
            f,
            ", {} blocks verified in image",
            self.verdict.blocks_verified
        )?;
        if let (Some(i), Some(p)) = (
            self.verdict.completed_by_interrupt,
            self.verdict.completed_by_poll,
        ) {
            write!(f, " ({i} completed by interrupt, {p} by poll)")?;
        }
        Ok(())
    }
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// Runs the smoke scenario once. The failure carries the logs: the run directory is
/// gone by the time the caller sees it (unless kept).
pub fn run_smoke(opts: &SmokeOptions) -> Result<SmokeReport, Box<RunFailure>> {
    run_in_dir(opts.keep.as_deref(), "guest", |boot, dir| {
        smoke(boot, dir, opts)
    })
}

fn smoke(boot: &mut Boot, dir: &RunDir, opts: &SmokeOptions) -> Result<SmokeReport, RunError> {
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let bins = check_binaries(&Binaries {
        backend: opts.backend.clone(),
        image: opts.image.clone(),
        qemu: opts.qemu.clone(),
    })?;
    let (accel, why) = accel::choose(opts.accel, Path::new(KVM_DEVICE));
    println!("accel: {accel} ({why})");

    let disk = dir.create_disk(DISK_BYTES)?;
    let socket = dir.socket_path()?;
    let backend = boot.start_backend(
        backend_command(&bins.backend, &socket, [&disk]),
        &dir.log_path("backend"),
        &socket,
        deadline,
    )?;
    println!(
        "backend: pid {} listening on {} after {:.3} s",
        backend.pid(),
        socket.display(),
        start.elapsed().as_secs_f64()
    );

    let guest_args = GuestArgs {
        workload: Workload::Smoke,
        irq: opts.irq,
        seed: opts.seed,
        blocks: opts.blocks,
        ..GuestArgs::default()
    };
    let guest = qemu::Guest::Image {
        image: bins.image,
        args: guest_args,
    };
    let config = QemuConfig::new(bins.qemu, socket, guest, accel);
    let exit = boot.run_guest(&config, dir, deadline)?;

    let mut image = File::open(&disk).map_err(|e| RunError::CouldNotOpenImage(disk.clone(), e))?;
    let verdict = judge_smoke(
        exit.code(),
        boot.result(),
        &mut image,
        SmokeParams {
            seed: opts.seed,
            blocks: opts.blocks,
            irq: opts.irq,
        },
    )
    .map_err(RunError::fail)?;
    if signals::interrupted() {
        return Err(RunError::Interrupted);
    }
    Ok(SmokeReport {
        irq: opts.irq,
        accel,
        boot_to_result: exit.result_after,
        verdict,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_line_has_the_agreed_shape() {
        let report = SmokeReport {
            irq: true,
            accel: Accel::Kvm,
            boot_to_result: Duration::from_millis(310),
            verdict: Verdict {
                blocks_verified: 64,
                block_size: 512,
                guest_elapsed_us: Some(120_000),
                completed_by_interrupt: None,
                completed_by_poll: None,
            },
        };
        assert_eq!(
            report.to_string(),
            "smoke irq=on accel=kvm: PASS boot-to-result 0.31 s (guest 0.12 s), 64 blocks verified in image"
        );
    }
}
