//! Choice of QEMU accelerator: KVM when /dev/kvm really works, TCG otherwise, and TCG
//! on nested paravirtual KVM (kvm_pvm), where the guest's interrupts arrive late.

use std::fmt;
use std::fs::OpenOptions;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

/// The KVM device the accelerator is probed on.
pub const KVM_DEVICE: &str = "/dev/kvm";

/// `_IO(KVMIO, 0x00)` and `_IO(KVMIO, 0x01)` from linux/kvm.h (KVMIO = 0xAE).
const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
/// The only stable KVM API version.
const KVM_API_VERSION: libc::c_int = 12;
/// Present when /dev/kvm is PVM's nested paravirtual KVM. Measured on such a host: the
/// smoke run takes 1.1 s under it with 25 completions found only by the HwTimer watchdog
/// (their interrupts came too late), against 0.15 s and none under TCG.
pub const KVM_PVM_MODULE: &str = "/sys/module/kvm_pvm";

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AccelChoice {
    Kvm,
    Tcg,
    Auto,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// The value of QEMU's `-accel`.
    pub fn qemu_name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.qemu_name())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KvmProbeError {
    #[error("could not open {0} read-write: {1}")]
    CouldNotOpen(String, std::io::Error),
    #[error("KVM_GET_API_VERSION failed: {0}")]
    CouldNotGetApiVersion(std::io::Error),
    #[error("KVM API version {0}, expected {KVM_API_VERSION}")]
    WrongApiVersion(libc::c_int),
    #[error("KVM_CREATE_VM failed: {0}")]
    CouldNotCreateVm(std::io::Error),
}

/// Checks that `dev` (normally /dev/kvm) opens read-write, speaks API 12 and can create
/// a VM. The VM fd is closed again at once.
pub fn probe_kvm(dev: &Path) -> Result<(), KvmProbeError> {
    let kvm = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| KvmProbeError::CouldNotOpen(dev.display().to_string(), e))?;
    // SAFETY: KVM_GET_API_VERSION takes no argument and only returns an int; on a
    // non-KVM fd the ioctl fails with ENOTTY and we report it.
    let version = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_GET_API_VERSION, 0) };
    if version < 0 {
        return Err(KvmProbeError::CouldNotGetApiVersion(
            std::io::Error::last_os_error(),
        ));
    }
    if version != KVM_API_VERSION {
        return Err(KvmProbeError::WrongApiVersion(version));
    }
    // SAFETY: KVM_CREATE_VM takes the machine type (0: default) and returns a new fd.
    let vm = unsafe { libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM, 0) };
    if vm < 0 {
        return Err(KvmProbeError::CouldNotCreateVm(
            std::io::Error::last_os_error(),
        ));
    }
    // SAFETY: `vm` is a fresh fd that nothing else owns; OwnedFd closes it on drop.
    drop(unsafe { OwnedFd::from_raw_fd(vm) });
    Ok(())
}

/// Picks the accelerator and says why.
pub fn choose(choice: AccelChoice, kvm_dev: &Path) -> (Accel, String) {
    choose_with(choice, kvm_dev, Path::new(KVM_PVM_MODULE))
}

/// [`choose`], with the path whose existence marks PVM's nested KVM.
pub fn choose_with(choice: AccelChoice, kvm_dev: &Path, pvm_module: &Path) -> (Accel, String) {
    match choice {
        AccelChoice::Kvm => (Accel::Kvm, "requested with --accel kvm".into()),
        AccelChoice::Tcg => (Accel::Tcg, "requested with --accel tcg".into()),
        AccelChoice::Auto if pvm_module.exists() => (
            Accel::Tcg,
            format!(
                "auto: {} exists, so {} is nested paravirtual KVM, which delivers the guest's \
                 interrupts late; TCG is faster here (--accel kvm to override)",
                pvm_module.display(),
                kvm_dev.display()
            ),
        ),
        AccelChoice::Auto => match probe_kvm(kvm_dev) {
            Ok(()) => (
                Accel::Kvm,
                format!(
                    "auto: {} API {KVM_API_VERSION}, KVM_CREATE_VM works",
                    kvm_dev.display()
                ),
            ),
            Err(e) => (Accel::Tcg, format!("auto: KVM unusable ({e})")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_device_falls_back_to_tcg_with_the_reason() {
        let (accel, why) = choose_with(
            AccelChoice::Auto,
            Path::new("/nonexistent/kvm"),
            Path::new("/nonexistent/kvm_pvm"),
        );
        assert_eq!(accel, Accel::Tcg);
        assert!(why.contains("/nonexistent/kvm"), "{why}");
    }

    #[test]
    fn a_device_that_is_not_kvm_falls_back_to_tcg() {
        // /dev/null opens read-write but refuses the KVM ioctls.
        let err = probe_kvm(Path::new("/dev/null")).unwrap_err();
        assert!(
            matches!(err, KvmProbeError::CouldNotGetApiVersion(_)),
            "{err}"
        );
        assert_eq!(
            choose_with(
                AccelChoice::Auto,
                Path::new("/dev/null"),
                Path::new("/nonexistent/kvm_pvm")
            )
            .0,
            Accel::Tcg
        );
    }

    #[test]
    fn nested_paravirtual_kvm_prefers_tcg_and_says_why() {
        let dir = std::env::temp_dir().join(format!("flakyhba-pvm-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Even a working /dev/kvm loses to TCG when the kvm_pvm module is loaded...
        let (accel, why) = choose_with(AccelChoice::Auto, Path::new("/dev/null"), &dir);
        assert_eq!(accel, Accel::Tcg);
        assert!(why.contains(&dir.display().to_string()), "{why}");
        assert!(why.contains("nested paravirtual KVM"), "{why}");
        // ...but an explicit --accel kvm is obeyed.
        assert_eq!(
            choose_with(AccelChoice::Kvm, Path::new("/dev/kvm"), &dir).0,
            Accel::Kvm
        );
        std::fs::remove_dir_all(&dir).unwrap();
        // Without the module, auto probes as before.
        let (accel, why) = choose_with(AccelChoice::Auto, Path::new("/nonexistent/kvm"), &dir);
        assert_eq!(accel, Accel::Tcg);
        assert!(why.contains("KVM unusable"), "{why}");
    }

    #[test]
    fn explicit_choice_is_not_probed() {
        assert_eq!(
            choose(AccelChoice::Kvm, Path::new("/nonexistent")).0,
            Accel::Kvm
        );
        assert_eq!(
            choose(AccelChoice::Tcg, Path::new("/dev/kvm")).0,
            Accel::Tcg
        );
    }
}
