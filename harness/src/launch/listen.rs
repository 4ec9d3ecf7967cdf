//! Readiness of the backend's vhost-user socket, seen from /proc/net/unix. A probe
//! connection would look like a frontend to the backend, so the harness never connects:
//! it waits for the path to appear with the listening flag (__SO_ACCEPTCON).

use std::path::Path;
use std::time::Instant;

use super::process::{ChildGuard, ProcessError, POLL_INTERVAL};
use super::signals;

/// `__SO_ACCEPTCON` in the Flags column: the socket is listening.
pub const SO_ACCEPTCON: u32 = 0x0001_0000;
const PROC_NET_UNIX: &str = "/proc/net/unix";

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("could not read {PROC_NET_UNIX}: {0}")]
    CouldNotReadProcNetUnix(std::io::Error),
    #[error("{name} exited ({status}) before listening on {socket}")]
    ExitedBeforeListening {
        name: String,
        status: std::process::ExitStatus,
        socket: String,
    },
    #[error("{name} did not listen on {socket} within {secs:.1} s")]
    TimedOut {
        name: String,
        socket: String,
        secs: f64,
    },
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// One row of /proc/net/unix that has a path.
#[derive(Debug, PartialEq, Eq)]
pub struct UnixSocketEntry<'a> {
    pub flags: u32,
    pub path: &'a str,
}

impl UnixSocketEntry<'_> {
    pub fn is_listening(&self) -> bool {
        self.flags & SO_ACCEPTCON != 0
    }
}

/// Parses one data row: `Num RefCount Protocol Flags Type St Inode [Path]`. The path is
/// everything after the seventh field, so it may contain spaces. Rows without a path
/// (unbound or socketpair sockets) and the header give None.
pub fn parse_row(line: &str) -> Option<UnixSocketEntry<'_>> {
    let mut rest = line.trim_end_matches('\n');
    let mut fields = [""; 7];
    for field in fields.iter_mut() {
        rest = rest.trim_start_matches(' ');
        let end = rest.find(' ').unwrap_or(rest.len());
        *field = &rest[..end];
        rest = &rest[end..];
    }
    let path = rest.strip_prefix(' ')?;
    if path.is_empty() || !fields[0].ends_with(':') {
        return None;
    }
    let flags = u32::from_str_radix(fields[3], 16).ok()?;
    Some(UnixSocketEntry { flags, path })
}

/// True when `table` (the text of /proc/net/unix) has a listening socket bound at `path`.
pub fn is_listening_in(table: &str, path: &str) -> bool {
    table
        .lines()
        .filter_map(parse_row)
        .any(|entry| entry.path == path && entry.is_listening())
}

/// True when some socket listens at `path` now.
pub fn is_listening(path: &Path) -> Result<bool, ListenError> {
    let table =
        std::fs::read_to_string(PROC_NET_UNIX).map_err(ListenError::CouldNotReadProcNetUnix)?;
    Ok(is_listening_in(&table, &path.to_string_lossy()))
}

/// Polls until `server` listens on `socket`, it exits, `deadline` passes or a signal
/// arrives.
pub fn wait_listening(
    server: &mut ChildGuard,
    socket: &Path,
    deadline: Instant,
) -> Result<(), ListenError> {
    let start = Instant::now();
    loop {
        if is_listening(socket)? {
            return Ok(());
        }
        if let Some(status) = server.try_wait()? {
            return Err(ListenError::ExitedBeforeListening {
                name: server.name().to_owned(),
                status,
                socket: socket.display().to_string(),
            });
        }
        if signals::interrupted() {
            return Err(ProcessError::Interrupted.into());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(ListenError::TimedOut {
                name: server.name().to_owned(),
                socket: socket.display().to_string(),
                secs: (now - start).as_secs_f64(),
            });
        }
        std::thread::sleep(POLL_INTERVAL.min(deadline - now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
Num       RefCount Protocol Flags    Type St Inode Path
0000000000000000: 00000002 00000000 00010000 0001 01 21837 /run/systemd/private
0000000000000000: 00000003 00000000 00000000 0001 03 30001 /tmp/run/vhost.sock
0000000000000000: 00000002 00000000 00000000 0002 01 11502
0000000000000000: 00000002 00000000 00010000 0001 01 40001 /tmp/with space/vhost.sock
0000000000000000: 00000002 00000000 00010000 0001 01 40002 @abstract
";

    #[test]
    fn rows_are_parsed_with_flags_and_path() {
        let rows: Vec<_> = TABLE.lines().filter_map(parse_row).collect();
        assert_eq!(rows.len(), 4, "{rows:?}");
        assert_eq!(
            rows[0],
            UnixSocketEntry {
                flags: 0x10000,
                path: "/run/systemd/private"
            }
        );
        assert!(rows[0].is_listening());
        assert!(!rows[1].is_listening());
        assert_eq!(rows[2].path, "/tmp/with space/vhost.sock");
    }

    #[test]
    fn connected_socket_at_the_path_is_not_listening() {
        // The 03 (connected) row at this path lacks __SO_ACCEPTCON.
        assert!(!is_listening_in(TABLE, "/tmp/run/vhost.sock"));
        assert!(is_listening_in(TABLE, "/tmp/with space/vhost.sock"));
        assert!(is_listening_in(TABLE, "/run/systemd/private"));
        assert!(!is_listening_in(TABLE, "/run/systemd"));
        assert!(!is_listening_in(TABLE, ""));
    }

    #[test]
    fn header_and_garbage_rows_are_skipped() {
        assert_eq!(
            parse_row("Num       RefCount Protocol Flags    Type St Inode Path"),
            None
        );
        assert_eq!(parse_row(""), None);
        assert_eq!(parse_row("0000: 1 0 zz 0001 01 5 /x"), None);
    }

    #[test]
    fn a_real_listener_is_seen_and_a_bound_socket_is_not() {
        use std::os::unix::net::{UnixDatagram, UnixListener};
        let dir = std::env::temp_dir().join(format!("flakyhba-listen-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("l.sock");
        assert!(!is_listening(&path).unwrap());
        let listener = UnixListener::bind(&path).unwrap();
        assert!(is_listening(&path).unwrap());
        drop(listener);
        std::fs::remove_file(&path).unwrap();
        let dgram_path = dir.join("d.sock");
        let _dgram = UnixDatagram::bind(&dgram_path).unwrap();
        assert!(!is_listening(&dgram_path).unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn guard(script: &str, dir: &Path) -> ChildGuard {
        let mut command = std::process::Command::new("sh");
        command.args(["-c", script]);
        ChildGuard::spawn(
            "backend",
            command,
            &dir.join("b.log"),
            crate::launch::process::Stdout::Log,
        )
        .unwrap()
    }

    #[test]
    fn a_server_that_exits_or_never_listens_is_reported() {
        use std::time::Duration;
        let dir = std::env::temp_dir().join(format!("flakyhba-wait-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("never.sock");
        let far = Instant::now() + Duration::from_secs(10);
        let mut exits = guard("echo no such LUN >&2; exit 3", &dir);
        match wait_listening(&mut exits, &socket, far) {
            Err(ListenError::ExitedBeforeListening { status, .. }) => {
                assert_eq!(status.code(), Some(3))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(exits.read_log(), "no such LUN\n");
        let mut silent = guard("sleep 100", &dir);
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(matches!(
            wait_listening(&mut silent, &socket, soon),
            Err(ListenError::TimedOut { .. })
        ));
        drop((exits, silent));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
