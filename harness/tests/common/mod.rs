//! Helpers shared by the integration tests: the binaries under test, scratch
//! directories, a running harness whose stdout can be waited on, and a scan of /proc.

#![allow(dead_code)] // each test file uses its own subset

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

pub const HARNESS: &str = env!("CARGO_BIN_EXE_flakyhba-harness");

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// A binary the real end-to-end tests need; panics (the test fails, never skips) when
/// it is missing.
fn required(env: &str, default: &str, build: &str) -> PathBuf {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(default));
    assert!(
        path.is_file(),
        "{} is missing: build it with `{build}` (or `make build`), or set {env}",
        path.display()
    );
    path
}

pub fn backend() -> PathBuf {
    required(
        "FLAKYHBA_BACKEND",
        "target/release/vhost-user-flakyhba",
        "cargo build --release -p flakyhba-backend",
    )
}

pub fn image() -> PathBuf {
    required(
        "FLAKYHBA_IMAGE",
        "target/x86_64-unknown-none/release/flakyhba-guest",
        "cargo build --release -p flakyhba-guest --target x86_64-unknown-none",
    )
}

/// Runs `cmd` to its end and returns its stdout; panics with stdout and stderr unless it
/// exited 0.
pub fn succeed(cmd: &mut Command) -> String {
    let out = cmd.output().expect("start the command");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A directory of its own for one test, removed on drop. `tmp/` inside it is the
/// harness's TMPDIR, so the test can check the harness left nothing there.
pub struct Scratch {
    pub root: PathBuf,
}

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        // Short: the socket path inside must fit sun_path.
        let root = std::env::temp_dir().join(format!("fh-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("tmp")).unwrap();
        Scratch { root }
    }

    pub fn tmpdir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// What the harness left in its TMPDIR.
    pub fn leftovers(&self) -> Vec<PathBuf> {
        walk(&self.tmpdir())
    }

    /// A stand-in backend: listens on `--socket-path` after `delay_s` seconds, accepts
    /// connections and never answers them (a vhost-user frontend then blocks in its
    /// handshake), until killed.
    pub fn fake_backend(&self, delay_s: f64) -> PathBuf {
        let path = self.root.join("fake-backend");
        let script = format!(
            "#!/usr/bin/env python3\n\
             import socket, sys, time\n\
             path = sys.argv[sys.argv.index('--socket-path') + 1]\n\
             time.sleep({delay_s})\n\
             s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n\
             s.bind(path)\n\
             s.listen(4)\n\
             held = []\n\
             while True:\n\
             \x20   held.append(s.accept()[0])\n"
        );
        std::fs::write(&path, script).unwrap();
        let status = Command::new("chmod").arg("+x").arg(&path).status().unwrap();
        assert!(status.success());
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            out.push(entry.path());
            out.extend(walk(&entry.path()));
        }
    }
    out
}

/// Pids of live processes whose command line mentions `marker` (the backend and QEMU
/// both name the socket, which lives under the test's TMPDIR).
pub fn processes_mentioning(marker: &Path) -> Vec<(u32, String)> {
    let marker = marker.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(&marker) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Polls until no process mentions `marker`, or `within` passes; returns the survivors.
pub fn wait_no_processes_mentioning(marker: &Path, within: Duration) -> Vec<(u32, String)> {
    let deadline = Instant::now() + within;
    loop {
        let found = processes_mentioning(marker);
        if found.is_empty() || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `flakyhba-harness` run under test, its stdout lines on a channel.
pub struct HarnessRun {
    pub child: Child,
    lines: Receiver<String>,
    pub stdout: Vec<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl HarnessRun {
    pub fn start(tmpdir: &Path, args: &[&std::ffi::OsStr]) -> HarnessRun {
        let mut child = Command::new(HARNESS)
            .args(args)
            .env("TMPDIR", tmpdir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start flakyhba-harness");
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        HarnessRun {
            child,
            lines,
            stdout: Vec::new(),
            stderr,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for a stdout line starting with `prefix` and returns it.
    pub fn wait_line(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(e) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "no line starting with {prefix:?} ({e}); stdout so far:\n{}",
                        self.stdout.join("\n")
                    );
                }
            }
        }
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own unreaped child's pid.
        let rc = unsafe { libc::kill(self.pid() as libc::pid_t, signal) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    /// Waits for the harness to exit (killing it after `within`) and returns its status,
    /// stdout and stderr.
    pub fn finish(mut self, within: Duration) -> (ExitStatus, String, String) {
        let deadline = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("flakyhba-harness did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(1)) {
            self.stdout.push(line);
        }
        let stderr = self.stderr.join().unwrap();
        (status, self.stdout.join("\n"), stderr)
    }
}
