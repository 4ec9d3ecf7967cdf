//! The host-side vhost-user frontend against the real backend binary: what QEMU cannot
//! script precisely. Data integrity, multiqueue, a device reset in the middle of I/O, a
//! reconnect, and ABORT TASK racing held and normal completions.
//!
//! The backend is $FLAKYHBA_BACKEND or target/release/vhost-user-flakyhba; a missing one
//! fails the test with the command that builds it.

mod common;

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use flakyhba_harness::bench::frontend::load::{run_load, LoadSpec, Pattern, DEFAULT_STALL};
use flakyhba_harness::bench::frontend::queue::{Completion, DataDir, ScsiQueue};
use flakyhba_harness::bench::frontend::scsi::{self, ScsiAddress};
use flakyhba_harness::bench::frontend::{check_good, wait_for_slot, FrontendConfig, ScsiFrontend};
use flakyhba_harness::launch::listen::wait_listening;
use flakyhba_harness::launch::process::{ChildGuard, Stdout};
use flakyhba_harness::launch::rundir::RunDir;

const DISK_BYTES: u64 = 16 << 20;
const T: Duration = Duration::from_secs(10);
const LUN0: ScsiAddress = ScsiAddress { target: 0, lun: 0 };

struct Backend {
    child: ChildGuard,
    socket: PathBuf,
    disk: PathBuf,
    trace: PathBuf,
    // Last: the directory goes after the child is dead.
    _dir: RunDir,
}

impl Backend {
    /// A backend with `extra` arguments; a trace is written when a fault is given.
    fn start(queues: u16, extra: &[&str]) -> Backend {
        let dir = RunDir::temporary().unwrap();
        let disk = dir.create_disk(DISK_BYTES).unwrap();
        let socket = dir.socket_path().unwrap();
        let trace = dir.path().join("trace.jsonl");
        let mut cmd = Command::new(common::backend());
        if !extra.is_empty() {
            cmd.arg("--trace").arg(&trace);
        }
        cmd.arg("--socket-path")
            .arg(&socket)
            .arg("--lun")
            .arg(&disk)
            .arg("--num-queues")
            .arg(queues.to_string())
            .args(extra);
        let mut child =
            ChildGuard::spawn("backend", cmd, &dir.log_path("backend"), Stdout::Log).unwrap();
        if let Err(e) = wait_listening(&mut child, &socket, Instant::now() + T) {
            panic!("{e}\n{}", child.read_log());
        }
        Backend {
            child,
            socket,
            disk,
            trace,
            _dir: dir,
        }
    }

    fn connect(&self, queues: u16, depth: u16) -> ScsiFrontend {
        let cfg = FrontendConfig {
            request_queues: queues,
            queue_depth: depth,
            max_transfer: 64 * 1024,
            event_idx: true,
        };
        match ScsiFrontend::connect(&self.socket, cfg) {
            Ok(fe) => fe,
            Err(e) => panic!("connect: {e}\n{}", self.child.read_log()),
        }
    }

    fn assert_alive(&mut self) {
        assert!(
            self.child.try_wait().unwrap().is_none(),
            "backend died:\n{}",
            self.child.read_log()
        );
    }

    /// Stops the backend with SIGTERM (it flushes its trace on the way out) and counts
    /// the trace records whose `ev` is `ev`.
    fn stop_and_count(&mut self, ev: &str) -> usize {
        // SAFETY: kill(2) on our own child's pid with a valid signal number.
        let rc = unsafe { libc::kill(self.child.pid() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(rc, 0);
        let status = self.child.wait_until(Instant::now() + T).unwrap();
        assert!(
            status.is_some_and(|s| s.success()),
            "backend did not exit cleanly on SIGTERM: {status:?}\n{}",
            self.child.read_log()
        );
        let needle = format!("\"ev\":\"{ev}\"");
        let text = std::fs::read_to_string(&self.trace).unwrap_or_default();
        text.lines().filter(|l| l.contains(&needle)).count()
    }

    fn file_bytes(&self, offset: u64, len: usize) -> Vec<u8> {
        let f = std::fs::File::open(&self.disk).unwrap();
        let mut v = vec![0; len];
        f.read_exact_at(&mut v, offset).unwrap();
        v
    }
}

/// Distinct, non-zero bytes for (seed, length).
fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x as u8) | 1
        })
        .collect()
}

/// One READ(16) or WRITE(16) of a batch.
struct Io {
    write: bool,
    lba: u64,
    data: Vec<u8>,
}

/// Puts every I/O of `ios` in flight at once on `q`, waits for all, and returns each
/// completion with the data read (for READs), in the order of `ios`.
fn batch(q: &mut ScsiQueue, tag0: u64, ios: &[Io]) -> Vec<(Completion, Vec<u8>)> {
    assert!(ios.len() <= usize::from(q.slots()));
    let mut slots = Vec::new();
    for (i, io) in ios.iter().enumerate() {
        let slot = q.alloc_slot().expect("free slot");
        let len = io.data.len() as u32;
        let cdb = scsi::rw16(io.write, io.lba, len / 512);
        let dir = if io.write {
            q.write_data(slot, &io.data);
            DataDir::ToDevice(len)
        } else {
            DataDir::FromDevice(len)
        };
        q.submit(
            slot,
            &scsi::cmd_req(LUN0, tag0 + i as u64, &cdb),
            scsi::CMD_RESP_LEN,
            dir,
        );
        slots.push(slot);
    }
    q.publish_and_kick().unwrap();
    let mut done: Vec<Option<(Completion, Vec<u8>)>> = vec![None; ios.len()];
    let deadline = Instant::now() + T;
    while done.iter().any(Option::is_none) {
        while let Some(c) = q.poll().unwrap() {
            let i = slots.iter().position(|&s| s == c.slot).expect("our slot");
            assert!(done[i].is_none(), "slot {} completed twice", c.slot);
            let mut data = vec![0; ios[i].data.len()];
            if !ios[i].write {
                q.read_data(c.slot, &mut data);
            }
            q.free_slot(c.slot);
            done[i] = Some((c, data));
        }
        assert!(Instant::now() < deadline, "batch did not complete");
        if done.iter().any(Option::is_none) {
            q.wait(Duration::from_millis(100)).unwrap();
        }
    }
    done.into_iter().map(Option::unwrap).collect()
}

fn write_then_verify(q: &mut ScsiQueue, tag0: u64, be: &Backend, items: &[(u64, usize, u64)]) {
    let writes: Vec<Io> = items
        .iter()
        .map(|&(lba, len, seed)| Io {
            write: true,
            lba,
            data: pattern(seed, len),
        })
        .collect();
    for (c, _) in batch(q, tag0, &writes) {
        check_good("WRITE(16)", &c).unwrap();
    }
    let reads: Vec<Io> = items
        .iter()
        .map(|&(lba, len, _)| Io {
            write: false,
            lba,
            data: vec![0; len],
        })
        .collect();
    for (i, (c, data)) in batch(q, tag0 + 1000, &reads).into_iter().enumerate() {
        check_good("READ(16)", &c).unwrap();
        assert_eq!(c.cmd_resid(), 0);
        assert!(
            data == writes[i].data,
            "read back differs at lba {}",
            items[i].0
        );
        // And the bytes really are in the LUN's backing file.
        assert!(
            be.file_bytes(items[i].0 * 512, items[i].1) == writes[i].data,
            "backing file differs at lba {}",
            items[i].0
        );
    }
}

#[test]
fn data_written_through_the_frontend_reads_back_identical() {
    let mut be = Backend::start(1, &[]);
    let mut fe = be.connect(1, 16);
    let (blocks, block) = fe.read_capacity(LUN0).unwrap();
    assert_eq!((blocks * u64::from(block), block), (DISK_BYTES, 512));
    // One at a time: small, odd-sized, large, and the last blocks of the LUN.
    let last = blocks - 8;
    for (i, &(lba, len)) in [(0u64, 512usize), (1, 4096), (1000, 65536), (last, 4096)]
        .iter()
        .enumerate()
    {
        let mut data = pattern(i as u64 + 1, len);
        let want = data.clone();
        let c = fe
            .execute(
                0,
                LUN0,
                &scsi::rw16(true, lba, (len / 512) as u32),
                DataDir::ToDevice(len as u32),
                &mut data,
                T,
            )
            .unwrap();
        check_good("WRITE(16)", &c).unwrap();
        let mut back = vec![0; len];
        let c = fe
            .execute(
                0,
                LUN0,
                &scsi::rw16(false, lba, (len / 512) as u32),
                DataDir::FromDevice(len as u32),
                &mut back,
                T,
            )
            .unwrap();
        check_good("READ(16)", &c).unwrap();
        assert!(back == want, "lba {lba}: read back differs");
        assert!(
            be.file_bytes(lba * 512, len) == want,
            "lba {lba}: file differs"
        );
    }
    // Sixteen in flight at once, each to its own blocks with its own pattern.
    let items: Vec<(u64, usize, u64)> =
        (0..16u64).map(|i| (4096 + i * 64, 8192, 100 + i)).collect();
    let (_, queues) = fe.queues_mut();
    write_then_verify(&mut queues[0], 10_000, &be, &items);
    // A read past the end is refused, not served.
    let mut buf = vec![0; 4096];
    let c = fe
        .execute(
            0,
            LUN0,
            &scsi::rw16(false, blocks - 4, 8),
            DataDir::FromDevice(4096),
            &mut buf,
            T,
        )
        .unwrap();
    assert_eq!(c.cmd_response(), scsi::VIRTIO_SCSI_S_OK);
    assert_eq!(c.cmd_status(), scsi::SAM_STAT_CHECK_CONDITION);
    be.assert_alive();
}

#[test]
fn four_queues_carry_io_at_once() {
    let mut be = Backend::start(4, &[]);
    let mut fe = be.connect(4, 8);
    assert_eq!(fe.request_queue_count(), 4);
    fe.read_capacity(LUN0).unwrap();
    let queues = fe.take_request_queues();
    let be_ref = &be;
    let queues: Vec<ScsiQueue> = std::thread::scope(|s| {
        let handles: Vec<_> = queues
            .into_iter()
            .enumerate()
            .map(|(n, mut q)| {
                s.spawn(move || {
                    // Each queue its own region and patterns, several rounds deep.
                    for round in 0..4u64 {
                        let items: Vec<(u64, usize, u64)> = (0..8u64)
                            .map(|i| {
                                let lba = 8192 + n as u64 * 4096 + round * 512 + i * 16;
                                (lba, 4096, (n as u64) << 32 | round << 8 | i)
                            })
                            .collect();
                        write_then_verify(
                            &mut q,
                            (n as u64 + 1) << 40 | round << 16,
                            be_ref,
                            &items,
                        );
                    }
                    q
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    fe.put_request_queues(queues);
    // And the load generator over all four, mixed reads and writes.
    let spec = LoadSpec {
        lun: LUN0,
        block_bytes: 4096,
        read_percent: 50,
        pattern: Pattern::Random,
        duration: Duration::from_millis(500),
        seed: 3,
        stall: DEFAULT_STALL,
    };
    let r = run_load(&mut fe, &spec).unwrap();
    assert_eq!(r.errors, 0);
    assert!(
        r.reads > 100 && r.writes > 100,
        "{} reads, {} writes",
        r.reads,
        r.writes
    );
    assert_eq!(r.latency.count(), r.ios());
    be.assert_alive();
}

/// Submits one READ(16) of `lba` on `q` with tag `tag` and kicks; returns its slot.
fn submit_read(q: &mut ScsiQueue, tag: u64, lba: u64) -> u16 {
    let slot = q.alloc_slot().expect("free slot");
    q.submit(
        slot,
        &scsi::cmd_req(LUN0, tag, &scsi::rw16(false, lba, 8)),
        scsi::CMD_RESP_LEN,
        DataDir::FromDevice(4096),
    );
    q.publish_and_kick().unwrap();
    slot
}

/// Nothing arrives on `q` for `d`.
fn assert_quiet(q: &mut ScsiQueue, d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        assert_eq!(q.poll().unwrap(), None, "unexpected completion");
        q.wait(Duration::from_millis(20)).unwrap();
    }
}

#[test]
fn device_reset_mid_io_then_io_works() {
    let mut be = Backend::start(1, &["--fault", "lose:opcode=read-16,lba=0..64"]);
    let mut fe = be.connect(1, 16);
    fe.read_capacity(LUN0).unwrap();
    let (_, queues) = fe.queues_mut();
    let q = &mut queues[0];
    // Lost reads stay in flight; a write completes around them.
    for i in 0..4u64 {
        submit_read(q, 500 + i, i * 8);
    }
    write_then_verify(q, 600, &be, &[(1000, 4096, 7)]);
    assert_eq!(q.in_flight(), 4);
    assert_quiet(q, Duration::from_millis(200));

    fe.reset_device().unwrap();
    let (_, queues) = fe.queues_mut();
    assert_eq!(queues[0].in_flight(), 0);
    // The device comes back: capacity (after its unit attention), old data, new I/O.
    fe.read_capacity(LUN0).unwrap();
    let mut back = vec![0; 4096];
    let c = fe
        .execute(
            0,
            LUN0,
            &scsi::rw16(false, 1000, 8),
            DataDir::FromDevice(4096),
            &mut back,
            T,
        )
        .unwrap();
    check_good("READ(16)", &c).unwrap();
    assert!(back == pattern(7, 4096));
    let (_, queues) = fe.queues_mut();
    write_then_verify(
        &mut queues[0],
        700,
        &be,
        &[(2000, 8192, 8), (3000, 4096, 9)],
    );
    // The dropped reads never surface on the new ring.
    assert_quiet(&mut queues[0], Duration::from_millis(200));
    // A second reset straight after works as well.
    fe.reset_device().unwrap();
    fe.read_capacity(LUN0).unwrap();
    be.assert_alive();
    // Two resets, and the disconnect that SIGTERM's teardown may add.
    let resets = be.stop_and_count("device-reset");
    assert!((2..=3).contains(&resets), "{resets} device-reset records");
}

#[test]
fn a_new_frontend_is_served_after_one_left_mid_io() {
    let mut be = Backend::start(2, &["--fault", "lose:opcode=read-16,lba=0..64"]);
    {
        let mut fe = be.connect(2, 8);
        fe.read_capacity(LUN0).unwrap();
        let (_, queues) = fe.queues_mut();
        write_then_verify(&mut queues[1], 1, &be, &[(512, 16384, 21)]);
        submit_read(&mut queues[0], 50, 0);
        submit_read(&mut queues[1], 51, 8);
        // Dropped with two requests held by the backend.
    }
    for round in 0..2u64 {
        let mut fe = be.connect(2, 8);
        fe.read_capacity(LUN0).unwrap();
        let mut back = vec![0; 16384];
        let c = fe
            .execute(
                1,
                LUN0,
                &scsi::rw16(false, 512, 32),
                DataDir::FromDevice(16384),
                &mut back,
                T,
            )
            .unwrap();
        check_good("READ(16)", &c).unwrap();
        assert!(
            back == pattern(21, 16384),
            "round {round}: data lost across reconnect"
        );
        let (_, queues) = fe.queues_mut();
        write_then_verify(
            &mut queues[0],
            100 + round * 100,
            &be,
            &[(4096 + round * 64, 4096, 30 + round)],
        );
    }
    be.assert_alive();
    // Each frontend that went away (with held requests or memory) was a device reset.
    let resets = be.stop_and_count("device-reset");
    assert!(
        resets >= 2,
        "{resets} device-reset records for 3 frontends gone"
    );
}

/// Sends ABORT TASK for `tag` and returns the TMF completion.
fn abort_task(control: &mut ScsiQueue, tag: u64) -> Completion {
    let slot = control.alloc_slot().expect("control slot");
    control.submit(
        slot,
        &scsi::tmf_req(scsi::VIRTIO_SCSI_T_TMF_ABORT_TASK, LUN0, tag),
        scsi::TMF_RESP_LEN,
        DataDir::None,
    );
    control.publish_and_kick().unwrap();
    let c = wait_for_slot(control, slot, T).unwrap();
    control.free_slot(slot);
    c
}

#[test]
fn abort_task_ends_held_requests_and_races_normal_ones() {
    let mut be = Backend::start(
        1,
        &[
            "--fault",
            "lose:opcode=read-16,lba=0..8",
            "--fault",
            "delay:opcode=read-16,lba=64..72,delay_ms=400",
        ],
    );
    let mut fe = be.connect(1, 16);
    fe.read_capacity(LUN0).unwrap();
    let (control, queues) = fe.queues_mut();
    let q = &mut queues[0];

    // A lost read and a delayed one: each is answered ABORTED, on its used ring before
    // the TMF's answer comes back.
    for (tag, lba) in [(42u64, 0u64), (43, 64)] {
        let slot = submit_read(q, tag, lba);
        // Let the backend pick it up first, so the abort finds it held.
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            q.poll().unwrap(),
            None,
            "tag {tag} completed before the abort"
        );
        let tmf = abort_task(control, tag);
        assert_eq!(tmf.tmf_response(), scsi::VIRTIO_SCSI_S_FUNCTION_COMPLETE);
        let c = q
            .poll()
            .unwrap()
            .expect("aborted request on the used ring before the TMF answer");
        assert_eq!(c.slot, slot);
        assert_eq!(c.cmd_response(), scsi::VIRTIO_SCSI_S_ABORTED, "tag {tag}");
        q.free_slot(slot);
        // The delayed one does not come back a second time when its delay runs out.
        assert_quiet(q, Duration::from_millis(if lba == 64 { 500 } else { 50 }));
    }

    // ABORT TASK racing a normal completion: either the read completed GOOD first and
    // the abort found nothing, or it was aborted; never both, never neither.
    let (mut good, mut aborted) = (0, 0);
    for i in 0..20u64 {
        let tag = 1000 + i;
        let slot = submit_read(q, tag, 1024 + i * 8);
        let tmf = abort_task(control, tag);
        assert_eq!(tmf.tmf_response(), scsi::VIRTIO_SCSI_S_FUNCTION_COMPLETE);
        let c = wait_for_slot(q, slot, T).unwrap();
        q.free_slot(slot);
        match c.cmd_response() {
            scsi::VIRTIO_SCSI_S_OK => {
                assert_eq!(c.cmd_status(), scsi::SAM_STAT_GOOD);
                good += 1;
            }
            scsi::VIRTIO_SCSI_S_ABORTED => aborted += 1,
            r => panic!("tag {tag}: response {r}"),
        }
        assert_eq!(q.poll().unwrap(), None, "tag {tag} completed twice");
    }
    assert_eq!(good + aborted, 20);

    // The LU still works.
    let (_, queues) = fe.queues_mut();
    write_then_verify(&mut queues[0], 5000, &be, &[(2048, 4096, 77)]);
    be.assert_alive();
}

#[test]
fn a_stopped_and_restarted_ring_drops_what_it_held_and_serves_again() {
    let mut be = Backend::start(2, &["--fault", "lose:opcode=read-16,lba=0..64"]);
    let mut fe = be.connect(2, 8);
    fe.read_capacity(LUN0).unwrap();
    let (_, queues) = fe.queues_mut();
    // Queue 1: three held reads and a write that completes; queue 0 keeps its data.
    write_then_verify(&mut queues[0], 10, &be, &[(700, 4096, 5)]);
    for i in 0..3u64 {
        submit_read(&mut queues[1], 100 + i, i * 8);
    }
    write_then_verify(&mut queues[1], 200, &be, &[(800, 4096, 6)]);
    assert_eq!(queues[1].in_flight(), 3);
    let published = queues[1].avail_idx();
    // GET_VRING_BASE: the backend has consumed every request it was given.
    let base = fe.restart_request_queue(1).unwrap();
    assert_eq!(base, u32::from(published));
    let (_, queues) = fe.queues_mut();
    assert_eq!(queues[1].in_flight(), 0);
    write_then_verify(&mut queues[1], 300, &be, &[(900, 8192, 7)]);
    assert_quiet(&mut queues[1], Duration::from_millis(200));
    // The other ring never stopped.
    write_then_verify(&mut queues[0], 400, &be, &[(700, 4096, 8)]);
    be.assert_alive();
}

#[test]
fn bench_subcommand_reports_a_load_and_the_suite_writes_its_table_and_json() {
    let be = Backend::start(1, &[]);
    let stdout = common::succeed(
        Command::new(common::HARNESS)
            .args([
                "bench",
                "--duration",
                "0.3",
                "--read-percent",
                "70",
                "--socket",
            ])
            .arg(&be.socket),
    );
    assert!(
        stdout.contains(" IOPS, ") && stdout.contains("p99"),
        "{stdout}"
    );
    assert!(stdout.contains(" 0 errors"), "{stdout}");

    let dir = RunDir::temporary().unwrap();
    let json = dir.path().join("bench.json");
    let stdout = common::succeed(
        Command::new(common::HARNESS)
            .args(["bench", "--suite", "--repeats", "1", "--duration", "0.2"])
            .args(["--image-size", "16M", "--backend"])
            .arg(common::backend())
            .arg("--json")
            .arg(&json),
    );
    for row in [
        "4k randread qd32 1q    ours ",
        "4k randwrite qd32 1q",
        "1M seqread qd8 1q",
        "4k randread qd32 4q",
        "ours+idle plan",
        "host pread 1M seq",
        "4 queues / 1 queue",
        "armed idle plan / no plan",
    ] {
        assert!(stdout.contains(row), "no {row:?} in\n{stdout}");
    }
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for c in cases {
        assert!(c["median"].as_f64().unwrap() > 0.0, "{c}");
        assert_eq!(c["runs"].as_array().unwrap().len(), 1);
    }
    assert!(report["ratios"].as_array().unwrap().len() >= 3);
}

/// A peer that fails some runs (here: answers every command BUSY after its first run) is
/// reported run by run, left out of the figures, and does not end the suite.
#[test]
fn a_failing_peer_is_reported_and_the_suite_goes_on() {
    let dir = RunDir::temporary().unwrap();
    let json = dir.path().join("bench.json");
    let script = dir.path().join("peer.sh");
    let first = dir.path().join("first-run-done");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ -e '{first}' ]; then exec '{be}' --fault status:status=busy --lun \"$3\" \"$1\" \"$2\"; fi\n\
             touch '{first}'; exec '{be}' --lun \"$3\" \"$1\" \"$2\"\n",
            first = first.display(),
            be = common::backend().display(),
        ),
    )
    .unwrap();
    let out = Command::new(common::HARNESS)
        .args(["bench", "--suite", "--repeats", "2", "--duration", "0.2"])
        .args(["--image-size", "16M", "--backend"])
        .arg(common::backend())
        .arg("--peer")
        .arg(format!("sh {}", script.display()))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("bench: FAILED: 4k randread qd32 1q [peer] round 2 failed: "),
        "{stderr}"
    );
    // Round 1's random read worked; round 2's did not.
    assert!(
        stdout.contains("1 of 2 runs FAILED and are left out; round 2: "),
        "{stdout}"
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let peer_read = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["server"] == "peer" && c["name"] == "4k randread qd32 1q")
        .unwrap();
    assert_eq!(
        peer_read["runs"].as_array().unwrap().len(),
        1,
        "{peer_read}"
    );
    assert_eq!(peer_read["rounds"], serde_json::json!([0]));
    assert_eq!(peer_read["failures"][0]["round"], 1);
    // The other peer cases failed in both rounds and have no figures.
    let write = report["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["server"] == "peer" && c["name"] == "4k randwrite qd32 1q")
        .unwrap();
    assert_eq!(write["failures"].as_array().unwrap().len(), 2, "{write}");
    assert!(
        stdout.contains("no run passed (IOPS)"),
        "a case without figures says so: {stdout}"
    );
    // The random-read ratio comes from round 1 alone.
    let ratio = report["ratios"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "4k randread qd32 1q: ours / peer")
        .unwrap();
    assert!(ratio["value"].as_f64().unwrap() > 0.0, "{ratio}");
}

/// Every new frontend's first command sees the power-on unit attention, and no later one
/// does. (The backend used to raise it only after handing the connection to its thread,
/// so on a loaded machine a quick frontend's READ CAPACITY now and then went first and a
/// later READ got the unit attention: 3 of 90 `bench --suite` runs, three at a time, before
/// the fix, 0 of 120 after. This test holds the contract; it does not win that race
/// reliably by itself.)
#[test]
fn the_first_command_of_every_connection_and_only_it_sees_power_on() {
    let be = Backend::start(1, &[]);
    for round in 0..40 {
        let mut fe = be.connect(1, 4);
        let mut none = [0u8; 0];
        let mut sense_of = |fe: &mut ScsiFrontend| {
            let c = fe
                .execute(
                    0,
                    ScsiAddress::default(),
                    &[scsi::TEST_UNIT_READY, 0, 0, 0, 0, 0],
                    DataDir::None,
                    &mut none,
                    T,
                )
                .unwrap();
            c.cmd_status()
        };
        assert_eq!(
            sense_of(&mut fe),
            scsi::SAM_STAT_CHECK_CONDITION,
            "connection {round}: no unit attention on the first command"
        );
        for n in 0..3 {
            assert_eq!(
                sense_of(&mut fe),
                scsi::SAM_STAT_GOOD,
                "connection {round}: command {} after the unit attention",
                n + 2
            );
        }
        // The next connection waits in the listener's backlog until this one is gone.
        drop(fe);
    }
}
