//! The per-run directory: socket, disk image and logs. Removed on drop (even when the
//! run failed or was interrupted) unless the user asked to keep it.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Once;

/// Temporary run directories are `<temp>/flakyhba-<pid>-<n>`.
const TEMP_PREFIX: &str = "flakyhba-";

/// Size of the sparse disk image the backend serves as its LUN.
pub const DISK_BYTES: u64 = 64 * 1024 * 1024;
/// `sun_path` holds 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, thiserror::Error)]
pub enum RunDirError {
    #[error("could not create run directory {0}: {1}")]
    CouldNotCreateDir(PathBuf, std::io::Error),
    #[error("could not create disk image {0}: {1}")]
    CouldNotCreateDisk(PathBuf, std::io::Error),
    #[error("could not prepare image {0}: {1}")]
    CouldNotPrepareImage(PathBuf, std::io::Error),
    #[error("socket path {0} is longer than {MAX_SOCKET_PATH} bytes; use a shorter TMPDIR or --keep DIR")]
    SocketPathTooLong(PathBuf),
}

/// The pid in a temporary run directory's name, `flakyhba-<pid>-<n>`.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(TEMP_PREFIX)?;
    let (pid, n) = rest.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

/// Removes the temporary run directories in `base` whose harness process no longer
/// exists. Only this user's directories, and never one of a live process.
fn sweep_orphans(base: &Path) {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: getuid has no preconditions and cannot fail.
    let uid = unsafe { libc::getuid() };
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(owner_pid) else {
            continue;
        };
        let path = entry.path();
        let ours = std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == uid);
        if !ours || pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        match std::fs::remove_dir_all(&path) {
            Ok(()) => log::info!("removed {}, left by harness pid {pid}", path.display()),
            Err(e) => log::warn!("could not remove {}: {e}", path.display()),
        }
    }
}

#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl RunDir {
    /// A fresh directory under the system temp dir (honours TMPDIR), removed on drop.
    /// The first call also removes the directories of harness processes that are gone:
    /// a harness killed with SIGKILL cannot clean up after itself (its children die with
    /// it, through PR_SET_PDEATHSIG, but its directory and socket stay).
    pub fn temporary() -> Result<RunDir, RunDirError> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        static SWEEP: Once = Once::new();
        let base = std::env::temp_dir();
        SWEEP.call_once(|| sweep_orphans(&base));
        loop {
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let path = base.join(format!("{TEMP_PREFIX}{}-{n}", std::process::id()));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(RunDir { path, keep: false }),
                // A leftover of an earlier process with the same pid: pick the next name.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(RunDirError::CouldNotCreateDir(path, e)),
            }
        }
    }

    /// `dir` (created if missing) that outlives the run, for its logs (`--keep DIR`).
    pub fn kept(dir: &Path) -> Result<RunDir, RunDirError> {
        std::fs::create_dir_all(dir).map_err(|e| RunDirError::CouldNotCreateDir(dir.into(), e))?;
        let path =
            std::path::absolute(dir).map_err(|e| RunDirError::CouldNotCreateDir(dir.into(), e))?;
        Ok(RunDir { path, keep: true })
    }

    /// `keep` when given ([`RunDir::kept`]), else a temporary directory.
    pub fn kept_or_temporary(keep: Option<&Path>) -> Result<RunDir, RunDirError> {
        match keep {
            Some(keep) => RunDir::kept(keep),
            None => RunDir::temporary(),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_kept(&self) -> bool {
        self.keep
    }

    /// The vhost-user socket path, checked against the `sun_path` limit.
    pub fn socket_path(&self) -> Result<PathBuf, RunDirError> {
        self.unix_socket("vhost.sock")
    }

    /// The backend's control socket path (`--control-socket`), checked as above.
    pub fn control_socket_path(&self) -> Result<PathBuf, RunDirError> {
        self.unix_socket("control.sock")
    }

    fn unix_socket(&self, name: &str) -> Result<PathBuf, RunDirError> {
        let path = self.path.join(name);
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(RunDirError::SocketPathTooLong(path));
        }
        Ok(path)
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.path.join(format!("{name}.log"))
    }

    /// Creates (or truncates) `disk.img`, a sparse disk image of `bytes` bytes of zeroes.
    pub fn create_disk(&self, bytes: u64) -> Result<PathBuf, RunDirError> {
        self.create_image("disk.img", bytes)
    }

    /// Creates (or truncates) the sparse image `name` of `bytes` bytes of zeroes.
    pub fn create_image(&self, name: &str, bytes: u64) -> Result<PathBuf, RunDirError> {
        let path = self.path.join(name);
        create_sparse(&path, bytes)
            .map_err(|e| RunDirError::CouldNotCreateDisk(path.clone(), e))?;
        Ok(path)
    }
}

/// Creates (or truncates) `path` as a sparse file of `bytes` bytes of zeroes.
pub fn create_sparse(path: &Path, bytes: u64) -> std::io::Result<()> {
    File::create(path)?.set_len(bytes)
}

/// Fills `path` with `bytes` of non-zero data unless it already has that many, so reads
/// hit real page-cache pages, never holes.
pub fn prepare_image(path: &Path, bytes: u64) -> Result<(), RunDirError> {
    let err = |e| RunDirError::CouldNotPrepareImage(path.to_owned(), e);
    if std::fs::metadata(path)
        .map(|m| m.len() >= bytes)
        .unwrap_or(false)
    {
        return Ok(());
    }
    let mut f = File::create(path).map_err(err)?;
    let mut chunk = vec![0u8; 1 << 20];
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        f.write_all(&chunk[..n]).map_err(err)?;
        left -= n as u64;
    }
    f.sync_all().map_err(err)
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            // A stale socket only confuses the next run; the logs and image stay.
            for socket in ["vhost.sock", "control.sock"] {
                let _ = std::fs::remove_file(self.path.join(socket));
            }
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            log::warn!("could not remove {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn directories_of_dead_harnesses_are_swept_and_live_ones_kept() {
        let base = std::env::temp_dir().join(format!("flakyhba-sweep-test-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        // A pid far above pid_max (4194304) never exists; ours does.
        let dead = base.join("flakyhba-999999999-0");
        let live = base.join(format!("flakyhba-{}-7", std::process::id()));
        let other = base.join("flakyhba-keep-me");
        for d in [&dead, &live, &other] {
            std::fs::create_dir_all(d).unwrap();
            File::create(d.join("vhost.sock")).unwrap();
        }
        sweep_orphans(&base);
        assert!(!dead.exists(), "a dead harness's directory is removed");
        assert!(live.exists(), "a live one stays");
        assert!(other.exists(), "other names are not ours");
        std::fs::remove_dir_all(&base).unwrap();
        assert_eq!(owner_pid("flakyhba-12-3"), Some(12));
        assert_eq!(owner_pid("flakyhba-12"), None);
        assert_eq!(owner_pid("flakyhba-x-3"), None);
    }

    #[test]
    fn temporary_dir_is_removed_on_drop_with_its_contents() {
        let dir = RunDir::temporary().unwrap();
        let path = dir.path().to_owned();
        let disk = dir.create_disk(DISK_BYTES).unwrap();
        let meta = std::fs::metadata(&disk).unwrap();
        assert_eq!(meta.len(), DISK_BYTES);
        // Sparse: far fewer blocks allocated than the length.
        assert!(
            meta.blocks() * 512 < DISK_BYTES / 16,
            "{} blocks",
            meta.blocks()
        );
        std::fs::write(dir.log_path("qemu"), "x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn kept_dir_survives_but_loses_its_socket() {
        let base = std::env::temp_dir().join(format!("flakyhba-keep-test-{}", std::process::id()));
        let dir = RunDir::kept(&base).unwrap();
        std::fs::write(dir.socket_path().unwrap(), "").unwrap();
        std::fs::write(dir.control_socket_path().unwrap(), "").unwrap();
        std::fs::write(dir.log_path("backend"), "log").unwrap();
        drop(dir);
        assert!(base.join("backend.log").exists());
        assert!(!base.join("vhost.sock").exists());
        assert!(!base.join("control.sock").exists());
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn overlong_socket_path_is_refused() {
        let dir = RunDir {
            path: PathBuf::from(format!("/tmp/{}", "d".repeat(120))),
            keep: true,
        };
        assert!(matches!(
            dir.socket_path(),
            Err(RunDirError::SocketPathTooLong(_))
        ));
        assert!(matches!(
            dir.control_socket_path(),
            Err(RunDirError::SocketPathTooLong(_))
        ));
        std::mem::forget(dir);
    }
}
