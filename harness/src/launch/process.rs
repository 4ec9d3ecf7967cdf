//! Child process supervision. Every child sits under a [`ChildGuard`] that kills it
//! (SIGKILL) and reaps it on drop, and gets PR_SET_PDEATHSIG(SIGKILL) so that even a
//! SIGKILLed harness leaves no child behind.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::signals;

/// How often wait loops look at the child and at the signal flag.
pub const POLL_INTERVAL: Duration = Duration::from_millis(5);

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("could not create log file {0}: {1}")]
    CouldNotCreateLog(PathBuf, std::io::Error),
    #[error("could not start {name} ({program}): {source}")]
    CouldNotSpawn {
        name: String,
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("could not wait for {0}: {1}")]
    CouldNotWait(String, std::io::Error),
    #[error("interrupted by a signal")]
    Interrupted,
}

/// Where a child's stdout goes. Stderr always goes to the log file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdout {
    Log,
    /// Piped to the harness (QEMU's `-serial stdio`).
    Piped,
}

/// A running child that is killed and reaped when the guard is dropped.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Child,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl ChildGuard {
    /// Starts `command` with stdin closed, stdout per `stdout` and stderr to `log`, in
    /// its own process group (a terminal's Ctrl-C reaches only the harness, which then
    /// tears down in order), with PR_SET_PDEATHSIG(SIGKILL).
    ///
    /// The death signal follows the spawning *thread*: call this from the main thread.
    pub fn spawn(
        name: &str,
        mut command: Command,
        log: &Path,
        stdout: Stdout,
    ) -> Result<ChildGuard, ProcessError> {
        let log_file =
            File::create(log).map_err(|e| ProcessError::CouldNotCreateLog(log.to_owned(), e))?;
        let stderr = log_file
            .try_clone()
            .map_err(|e| ProcessError::CouldNotCreateLog(log.to_owned(), e))?;
        command.stdin(Stdio::null()).stderr(stderr);
        match stdout {
            Stdout::Log => command.stdout(log_file),
            Stdout::Piped => command.stdout(Stdio::piped()),
        };
        command.process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs between fork and exec and only makes async-signal-safe
        // calls (prctl, getppid) and builds io::Errors without allocating.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The harness died between fork and prctl: no signal would ever come.
                if libc::getppid() != parent {
                    return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
                }
                Ok(())
            })
        };
        let child = command
            .spawn()
            .map_err(|source| ProcessError::CouldNotSpawn {
                name: name.to_owned(),
                program: PathBuf::from(command.get_program()),
                source,
            })?;
        log::debug!("started {name} pid {}", child.id());
        Ok(ChildGuard {
            name: name.to_owned(),
            child,
            log: log.to_owned(),
            status: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The piped stdout, once.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The exit status if the child has exited (reaping it), else None.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, ProcessError> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(|e| ProcessError::CouldNotWait(self.name.clone(), e))?;
        }
        Ok(self.status)
    }

    /// Waits for the child to exit until `deadline` (None: it is still running then).
    /// Returns [`ProcessError::Interrupted`] as soon as a handled signal arrived.
    pub fn wait_until(&mut self, deadline: Instant) -> Result<Option<ExitStatus>, ProcessError> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if signals::interrupted() {
                return Err(ProcessError::Interrupted);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(POLL_INTERVAL.min(deadline - now));
        }
    }

    /// SIGKILLs the child unless it already exited, and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus, ProcessError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // ESRCH/EINVAL cannot happen for an unreaped child; wait() below reports the rest.
        let _ = self.child.kill();
        let status = self
            .child
            .wait()
            .map_err(|e| ProcessError::CouldNotWait(self.name.clone(), e))?;
        self.status = Some(status);
        Ok(status)
    }

    /// SIGTERM, then up to `grace` for the child to exit, then SIGKILL; reaps it. For
    /// children that write out their state on SIGTERM (the backend flushes its trace).
    /// Waits through a pending Ctrl-C too: the grace is short and the state worth having.
    pub fn terminate(&mut self, grace: Duration) -> Result<ExitStatus, ProcessError> {
        if let Some(status) = self.try_wait()? {
            return Ok(status);
        }
        // SAFETY: kill(2) on our own unreaped child's pid; it cannot name another process.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(POLL_INTERVAL);
        }
        log::warn!("{} ignored SIGTERM for {grace:?}; killing it", self.name);
        self.kill()
    }

    /// The child's log so far (lossy UTF-8), or a note why it could not be read.
    pub fn read_log(&self) -> String {
        read_log(&self.log)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            log::warn!("{e}");
        }
    }
}

/// A log file's contents (lossy UTF-8), or a note why it could not be read.
pub fn read_log(path: &Path) -> String {
    match std::fs::read(path) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(e) => format!("<could not read {}: {e}>", path.display()),
    }
}

/// The last `lines` lines of a log, joined by newlines.
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tail_is_the_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a\nb", 5), "a\nb");
        assert_eq!(tail("", 3), "");
    }

    fn pid_exists(pid: u32) -> bool {
        // SAFETY: signal 0 only checks that the pid exists; nothing is delivered.
        unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "flakyhba-process-test-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn dropping_the_guard_kills_and_reaps_the_child() {
        let dir = scratch("drop");
        let mut command = Command::new("sleep");
        command.arg("100");
        let guard = ChildGuard::spawn("sleep", command, &dir.join("sleep.log"), Stdout::Log)
            .expect("spawn sleep");
        let pid = guard.pid();
        assert!(pid_exists(pid));
        drop(guard);
        // Reaped as well as killed: a zombie would still answer kill(pid, 0).
        assert!(!pid_exists(pid), "pid {pid} survived its guard");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wait_until_returns_the_exit_status_or_none_at_the_deadline() {
        let dir = scratch("wait");
        let mut command = Command::new("sh");
        command.args(["-c", "echo to-log; exit 3"]);
        let mut quick = ChildGuard::spawn("sh", command, &dir.join("sh.log"), Stdout::Log).unwrap();
        let status = quick
            .wait_until(Instant::now() + Duration::from_secs(10))
            .unwrap()
            .expect("sh exits");
        assert_eq!(status.code(), Some(3));
        assert_eq!(quick.read_log(), "to-log\n");

        let mut command = Command::new("sleep");
        command.arg("100");
        let mut slow =
            ChildGuard::spawn("sleep", command, &dir.join("sleep.log"), Stdout::Log).unwrap();
        let waited = slow
            .wait_until(Instant::now() + Duration::from_millis(50))
            .unwrap();
        assert!(waited.is_none());
        let status = slow.kill().unwrap();
        assert!(!status.success());
        drop((quick, slow));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Waits until the shell has set its trap and said so.
    fn wait_ready(child: &ChildGuard) {
        while !child.read_log().starts_with("ready\n") {
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    #[test]
    fn terminate_lets_the_child_finish_on_sigterm_and_kills_one_that_ignores_it() {
        let dir = scratch("term");
        let mut command = Command::new("sh");
        command.args([
            "-c",
            "trap 'echo flushed; exit 0' TERM; echo ready; while :; do sleep 0.01; done",
        ]);
        let mut polite = ChildGuard::spawn("sh", command, &dir.join("p.log"), Stdout::Log).unwrap();
        wait_ready(&polite);
        let status = polite.terminate(Duration::from_secs(10)).unwrap();
        assert_eq!(status.code(), Some(0));
        assert_eq!(polite.read_log(), "ready\nflushed\n");

        let mut command = Command::new("sh");
        command.args([
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 0.01; done",
        ]);
        let mut stubborn =
            ChildGuard::spawn("sh", command, &dir.join("s.log"), Stdout::Log).unwrap();
        wait_ready(&stubborn);
        let status = stubborn.terminate(Duration::from_millis(100)).unwrap();
        assert_eq!(status.code(), None, "killed by SIGKILL");
        drop((polite, stubborn));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    // PR_SET_PDEATHSIG is checked end to end in tests/supervision.rs (SIGKILLed harness).
    #[test]
    fn child_runs_in_its_own_process_group() {
        let dir = scratch("pgrp");
        let mut command = Command::new("sh");
        command.args(["-c", "sleep 100"]);
        let guard = ChildGuard::spawn("sh", command, &dir.join("sh.log"), Stdout::Log).unwrap();
        // SAFETY: getpgid only reads the process group of a live child we own.
        let pgid = unsafe { libc::getpgid(guard.pid() as libc::pid_t) };
        assert_eq!(pgid, guard.pid() as libc::pid_t);
        drop(guard);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
