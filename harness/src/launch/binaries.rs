//! The programs and files a boot needs, checked before anything starts: a missing one
//! names the command that builds it, and QEMU is looked up on PATH.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("{what} {path} is missing; build it with `{build}`")]
    Missing {
        what: &'static str,
        path: PathBuf,
        build: String,
    },
    #[error("QEMU {0} not found; install qemu-system-x86 (`make setup` does)")]
    QemuNotFound(PathBuf),
}

/// The programs a boot of the flakyhba guest image needs.
#[derive(Clone, Debug)]
pub struct Binaries {
    pub backend: PathBuf,
    pub image: PathBuf,
    pub qemu: PathBuf,
}

/// The binaries, with QEMU looked up on PATH; a missing one names its build command.
pub fn check_binaries(bins: &Binaries) -> Result<Binaries, SetupError> {
    require(
        "backend",
        &bins.backend,
        "make build` or `cargo build --release -p flakyhba-backend",
    )?;
    require(
        "guest image",
        &bins.image,
        "make build` or `cargo build --release -p flakyhba-guest --target x86_64-unknown-none",
    )?;
    Ok(Binaries {
        qemu: find_qemu(&bins.qemu)?,
        ..bins.clone()
    })
}

/// Ok when `path` is a file, else what is missing and the command that builds it.
pub fn require(what: &'static str, path: &Path, build: &str) -> Result<(), SetupError> {
    if path.is_file() {
        return Ok(());
    }
    Err(SetupError::Missing {
        what,
        path: path.to_owned(),
        build: build.to_owned(),
    })
}

/// QEMU as given when it has a slash, else its first match on PATH.
pub fn find_qemu(qemu: &Path) -> Result<PathBuf, SetupError> {
    find_program(qemu).ok_or_else(|| SetupError::QemuNotFound(qemu.to_owned()))
}

/// `program` as given when it has a slash, else its first match on PATH.
pub fn find_program(program: &Path) -> Option<PathBuf> {
    if program.components().count() > 1 {
        return program.is_file().then(|| program.to_owned());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_found_on_path_or_by_their_path() {
        assert!(find_program(Path::new("sh")).is_some());
        assert_eq!(
            find_program(Path::new("/bin/sh")),
            Some(PathBuf::from("/bin/sh"))
        );
        assert_eq!(find_program(Path::new("no-such-program-flakyhba")), None);
        assert_eq!(find_program(Path::new("./no/such")), None);
    }
}
