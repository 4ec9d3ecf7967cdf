//! Runs the built backend with the fault flags: a bad plan exits 2 naming file:line:col; a
//! good one is served, the control socket answers (list, add, stats, fire-event,
//! flush-trace), and the trace records device resets and the control socket's event.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserProtocolFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

mod common;

use common::{Served, TIMEOUT};

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-flakyhba");

/// One control-socket connection: a JSON line out, a JSON line back.
struct Control {
    out: UnixStream,
    input: BufReader<UnixStream>,
}

impl Control {
    fn connect(path: &Path) -> Control {
        let out = UnixStream::connect(path).unwrap();
        out.set_read_timeout(Some(TIMEOUT)).unwrap();
        let input = BufReader::new(out.try_clone().unwrap());
        Control { out, input }
    }

    fn ask(&mut self, req: Value) -> Value {
        writeln!(self.out, "{req}").unwrap();
        let mut line = String::new();
        self.input.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    }
}

fn trace_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Polls the trace (flushing it through the control socket) until `pred` holds.
fn wait_for_trace(ctl: &mut Control, path: &Path, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let start = Instant::now();
    loop {
        assert_eq!(ctl.ask(json!({"cmd": "flush-trace"}))["ok"], true);
        let lines = trace_lines(path);
        if pred(&lines) {
            return lines;
        }
        assert!(start.elapsed() < TIMEOUT, "trace never matched: {lines:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn bad_plan_exits_2_with_file_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "seed = 1\n\n[[fault]]\nkind = \"drop-interrupt\"\nprobability = 1.5\n",
    )
    .unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 4096]).unwrap();
    let out = Command::new(BIN)
        .arg("--socket-path")
        .arg(dir.path().join("s.sock"))
        .arg("--lun")
        .arg(&disk)
        .arg("--fault-plan")
        .arg(&plan)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    let prefix = format!("{}:5:", plan.display());
    assert!(lines[0].starts_with(&prefix), "{stderr}");
    assert!(lines[0].contains("probability"), "{stderr}");
    assert!(!dir.path().join("s.sock").exists(), "never listened");

    // A bad shorthand is a plan error too.
    let out = Command::new(BIN)
        .arg("--socket-path")
        .arg(dir.path().join("s.sock"))
        .arg("--lun")
        .arg(&disk)
        .args(["--fault", "lose:bogus=1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
}

#[test]
fn plan_trace_and_control_socket_work_together() {
    let dir = tempfile::tempdir().unwrap();
    let plan = dir.path().join("plan.toml");
    std::fs::write(
        &plan,
        "seed = 42\n[[fault]]\nname = \"lost irqs\"\nkind = \"drop-interrupt\"\nevery = 3\n",
    )
    .unwrap();
    let trace = dir.path().join("trace.jsonl");
    let control = dir.path().join("control.sock");
    let mut backend = Served::spawn(
        dir.path(),
        &[
            "--fault-plan",
            plan.to_str().unwrap(),
            "--fault",
            "delay:delay_ms=1",
            "--seed",
            "7",
            "--trace",
            trace.to_str().unwrap(),
            "--control-socket",
            control.to_str().unwrap(),
        ],
    );
    backend.wait_listening();
    backend.wait_for_socket(&control);

    let mut ctl = Control::connect(&control);
    let list = ctl.ask(json!({"cmd": "list"}));
    assert_eq!(list["ok"], true, "{list}");
    assert_eq!(list["seed"], 7, "--seed overrides the plan's");
    let faults = list["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 2);
    assert_eq!(faults[0]["kind"], "drop-interrupt");
    assert_eq!(faults[1]["kind"], "delay");

    let added = ctl
        .ask(json!({"cmd": "add", "fault": {"kind": "lose", "opcode": "read-10", "once": true}}));
    assert_eq!(added, json!({"ok": true, "id": 3}));
    assert_eq!(ctl.ask(json!({"cmd": "list"}))["faults"][2]["kind"], "lose");

    // A frontend that resets the device, then goes away. It never set up guest memory, so
    // its going away is no second reset (nor are the socket probes above).
    let stream = UnixStream::connect(&backend.socket).unwrap();
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut frontend = Frontend::from_stream(stream, 3);
    frontend.get_features().unwrap();
    frontend.set_owner().unwrap();
    frontend.get_protocol_features().unwrap();
    frontend
        .set_protocol_features(
            VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::RESET_DEVICE
                | VhostUserProtocolFeatures::REPLY_ACK,
        )
        .unwrap();
    frontend.reset_device().unwrap();
    let lines = wait_for_trace(&mut ctl, &trace, |l| {
        l.iter().any(|v| v["ev"] == "device-reset")
    });
    assert!(lines.iter().all(|v| v["t_us"].is_u64()), "{lines:#?}");
    drop(frontend);

    // An event fired over the control socket comes out at the next tick; with no frontend
    // connected it is lost, and both the decision and the loss are traced.
    let fired =
        ctl.ask(json!({"cmd": "fire-event", "event": "transport-reset", "target": 0, "lun": 0}));
    assert_eq!(fired["ok"], true, "{fired}");
    let lines = wait_for_trace(&mut ctl, &trace, |l| {
        l.iter().any(|v| v["ev"] == "event-lost")
    });
    let decided = lines
        .iter()
        .position(|v| v["ev"] == "fault" && v["kind"] == "event" && v["fault"] == 0)
        .expect("the control socket's event is traced");
    let lost = lines.iter().position(|v| v["ev"] == "event-lost").unwrap();
    assert!(decided < lost, "{lines:#?}");
    assert_eq!(lines[lost]["event"], "transport-reset");
    assert_eq!(lines[lost]["reason"], "no-frontend", "{lines:#?}");

    let stats = ctl.ask(json!({"cmd": "stats"}));
    assert_eq!(stats["ok"], true, "{stats}");
    assert_eq!(stats["stats"]["device_resets"], 1, "{stats}");
    assert_eq!(stats["stats"]["fired"]["event"], 1, "{stats}");
    assert_eq!(stats["stats"]["events_lost"], 1, "{stats}");
    assert_eq!(stats["stats"]["events_posted"], 0, "{stats}");

    // SIGTERM: the trace is flushed and both sockets are removed.
    // SAFETY: kill(2) with the pid of our own child and a valid signal number.
    let rc = unsafe { libc::kill(backend.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = backend.child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < TIMEOUT, "{}", backend.log());
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.code(), Some(0));
    let lines = trace_lines(&trace);
    assert_eq!(
        lines.iter().filter(|v| v["ev"] == "device-reset").count(),
        1,
        "{lines:#?}"
    );
    assert!(!control.exists());
    assert!(!backend.socket.exists());
}

/// Guest memory shared with the backend: a memfd mapped here and passed to it.
struct SharedMem {
    fd: std::fs::File,
    base: *mut u8,
    len: usize,
}

impl SharedMem {
    fn new(len: usize) -> SharedMem {
        use std::os::fd::FromRawFd;
        // SAFETY: a valid NUL-terminated name and flags; the fd is checked below.
        let fd = unsafe { libc::memfd_create(c"flakyhba-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { std::fs::File::from_raw_fd(fd) };
        fd.set_len(len as u64).unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: a shared mapping of the whole memfd; the result is checked.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        assert_ne!(base, libc::MAP_FAILED);
        SharedMem {
            fd,
            base: base.cast(),
            len,
        }
    }

    fn addr(&self, gpa: u64) -> u64 {
        self.base as u64 + gpa
    }

    fn write(&self, gpa: u64, bytes: &[u8]) {
        assert!(gpa as usize + bytes.len() <= self.len);
        // Everything written before is visible to the backend before what follows.
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        // SAFETY: in bounds (checked above) of a live mapping we own.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), self.base.add(gpa as usize), bytes.len())
        }
    }

    fn read<const N: usize>(&self, gpa: u64) -> [u8; N] {
        assert!(gpa as usize + N <= self.len);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        let mut out = [0u8; N];
        // SAFETY: in bounds (checked above) of a live mapping; the backend may write it
        // concurrently, which for plain bytes only means we see old or new values.
        unsafe { std::ptr::copy_nonoverlapping(self.base.add(gpa as usize), out.as_mut_ptr(), N) }
        out
    }

    fn u16_at(&self, gpa: u64) -> u16 {
        u16::from_le_bytes(self.read::<2>(gpa))
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping created in `new`.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

const RING: u16 = 16;
fn desc_gpa(q: usize) -> u64 {
    0x1_0000 * (q as u64 + 1)
}
fn avail_gpa(q: usize) -> u64 {
    desc_gpa(q) + 0x1000
}
fn used_gpa(q: usize) -> u64 {
    desc_gpa(q) + 0x2000
}

/// A minimal vhost-user driver: memory, three rings, kicks and interrupts.
struct Driver {
    /// Kept for the connection: dropping it is the driver going away.
    _frontend: Frontend,
    mem: SharedMem,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    next_head: u16,
}

impl Driver {
    fn start(socket: &Path) -> Driver {
        use std::os::fd::AsRawFd;
        let stream = UnixStream::connect(socket).unwrap();
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        let mut frontend = Frontend::from_stream(stream, 3);
        let features = frontend.get_features().unwrap();
        frontend.set_owner().unwrap();
        frontend.get_protocol_features().unwrap();
        frontend
            .set_protocol_features(VhostUserProtocolFeatures::MQ)
            .unwrap();
        const VERSION_1: u64 = 1 << 32;
        const PROTOCOL_FEATURES: u64 = 1 << 30;
        assert_eq!(
            features & (VERSION_1 | PROTOCOL_FEATURES),
            VERSION_1 | PROTOCOL_FEATURES
        );
        frontend
            .set_features(VERSION_1 | PROTOCOL_FEATURES)
            .unwrap();
        let mem = SharedMem::new(4 << 20);
        frontend
            .set_mem_table(&[VhostUserMemoryRegionInfo {
                guest_phys_addr: 0,
                memory_size: mem.len as u64,
                userspace_addr: mem.base as u64,
                mmap_offset: 0,
                mmap_handle: mem.fd.as_raw_fd(),
            }])
            .unwrap();
        let mut kicks = Vec::new();
        let mut calls = Vec::new();
        for q in 0..3 {
            frontend.set_vring_num(q, RING).unwrap();
            frontend
                .set_vring_addr(
                    q,
                    &VringConfigData {
                        queue_max_size: RING,
                        queue_size: RING,
                        flags: 0,
                        desc_table_addr: mem.addr(desc_gpa(q)),
                        used_ring_addr: mem.addr(used_gpa(q)),
                        avail_ring_addr: mem.addr(avail_gpa(q)),
                        log_addr: None,
                    },
                )
                .unwrap();
            frontend.set_vring_base(q, 0).unwrap();
            let call = EventFd::new(EFD_NONBLOCK).unwrap();
            let kick = EventFd::new(EFD_NONBLOCK).unwrap();
            frontend.set_vring_call(q, &call).unwrap();
            frontend.set_vring_kick(q, &kick).unwrap();
            frontend.set_vring_enable(q, true).unwrap();
            kicks.push(kick);
            calls.push(call);
        }
        Driver {
            _frontend: frontend,
            mem,
            kicks,
            calls,
            next_head: 0,
        }
    }

    /// Posts TEST UNIT READY with request id `id` on queue 2 and kicks; returns the
    /// response's address.
    fn tur(&mut self, id: u64) -> u64 {
        let q = 2;
        let head = self.next_head;
        self.next_head += 2;
        let hdr = 0x10_0000 + 0x1000 * u64::from(head);
        let resp = hdr + 0x800;
        let mut req = [0u8; 51];
        req[..4].copy_from_slice(&[1, 0, 0x40, 0]);
        req[8..16].copy_from_slice(&id.to_le_bytes());
        self.mem.write(hdr, &req);
        self.mem.write(resp, &[0xee; 108]);
        let d = |i: u16, addr: u64, len: u32, flags: u16, next: u16| {
            let mut raw = [0u8; 16];
            raw[..8].copy_from_slice(&addr.to_le_bytes());
            raw[8..12].copy_from_slice(&len.to_le_bytes());
            raw[12..14].copy_from_slice(&flags.to_le_bytes());
            raw[14..].copy_from_slice(&next.to_le_bytes());
            self.mem.write(desc_gpa(q) + 16 * u64::from(i), &raw);
        };
        d(head, hdr, 51, 1, head + 1); // NEXT
        d(head + 1, resp, 108, 2, 0); // WRITE
        let idx = self.mem.u16_at(avail_gpa(q) + 2);
        self.mem.write(
            avail_gpa(q) + 4 + 2 * u64::from(idx % RING),
            &head.to_le_bytes(),
        );
        self.mem
            .write(avail_gpa(q) + 2, &idx.wrapping_add(1).to_le_bytes());
        self.kicks[q].write(1).unwrap();
        resp
    }

    fn used_idx(&self, q: usize) -> u16 {
        self.mem.u16_at(used_gpa(q) + 2)
    }

    /// Waits up to `max` for the call eventfd of `q`.
    fn interrupted_within(&self, q: usize, max: Duration) -> bool {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.calls[q].as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, max.as_millis() as libc::c_int) };
        n == 1 && self.calls[q].read().is_ok()
    }
}

#[test]
fn requests_through_the_real_daemon_are_delayed_and_lose_interrupts() {
    let dir = tempfile::tempdir().unwrap();
    let trace = dir.path().join("trace.jsonl");
    let control = dir.path().join("control.sock");
    let mut backend = Served::spawn(
        dir.path(),
        &[
            "--fault",
            "delay:delay_ms=100,once=true",
            "--fault",
            "drop-interrupt:after=1",
            "--trace",
            trace.to_str().unwrap(),
            "--control-socket",
            control.to_str().unwrap(),
        ],
    );
    backend.wait_listening();
    backend.wait_for_socket(&control);
    let mut driver = Driver::start(&backend.socket);

    let start = Instant::now();
    let resp = driver.tur(1);
    assert!(
        driver.interrupted_within(2, TIMEOUT),
        "delayed request never completed:\n{}",
        backend.log()
    );
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(driver.used_idx(2), 1);
    assert_eq!(driver.mem.read::<108>(resp)[11], 0, "VIRTIO_SCSI_S_OK");

    // The second completion reaches the used ring without an interrupt.
    let resp = driver.tur(2);
    let start = Instant::now();
    while driver.used_idx(2) < 2 {
        assert!(start.elapsed() < TIMEOUT, "{}", backend.log());
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(driver.mem.read::<108>(resp)[11], 0);
    assert!(!driver.interrupted_within(2, Duration::from_millis(50)));

    // The driver goes away: a device reset once the backend has seen it.
    drop(driver);
    let mut ctl = Control::connect(&control);
    wait_for_trace(&mut ctl, &trace, |l| {
        l.iter().any(|v| v["ev"] == "device-reset")
    });
    let stats = ctl.ask(json!({"cmd": "stats"}))["stats"].clone();
    assert_eq!(stats["commands"], 2, "{stats}");
    assert_eq!(stats["signals_sent"], 1, "{stats}");
    assert_eq!(stats["signals_suppressed_fault"], 1, "{stats}");
    // SAFETY: kill(2) with the pid of our own child and a valid signal number.
    let rc = unsafe { libc::kill(backend.child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let start = Instant::now();
    while backend.child.try_wait().unwrap().is_none() {
        assert!(start.elapsed() < TIMEOUT, "{}", backend.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let lines = trace_lines(&trace);
    let find = |pred: &dyn Fn(&Value) -> bool| lines.iter().position(pred);
    let delayed = find(&|v| v["ev"] == "fault" && v["kind"] == "delay" && v["id"] == 1);
    let done = find(&|v| v["ev"] == "complete" && v["id"] == 1 && v["response"] == "ok");
    let dropped =
        find(&|v| v["ev"] == "signal-suppressed" && v["id"] == 2 && v["reason"] == "fault");
    assert!(
        delayed.is_some() && done.is_some() && dropped.is_some(),
        "{lines:#?}"
    );
    assert!(delayed < done);
    let reset = find(&|v| v["ev"] == "device-reset");
    assert!(
        reset > dropped,
        "the driver's going away is a device reset: {lines:#?}"
    );
}
