//! Queue-level tests of the fault path: real `VringRwLock`s for the control, event and first
//! request queue, real call eventfds, a real worker timer, and the engine's trace read back.
//! The rings are laid out by hand so that several chains can be in flight at once.

use std::cell::Cell;
use std::fs::File;
use std::io::Write;
use std::os::fd::{FromRawFd, IntoRawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use vhost_user_backend::VringT;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryAtomic, Le64};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::tests::{
    cmd_header, fixture, lun, read10, take_warnings, tmf, write10, Fixture, RESP_LEN,
};
use super::*;
// The vring indexes, not the wire's u16 ones of crate::virtio.
use super::{CONTROL_QUEUE, EVENT_QUEUE, FIRST_REQUEST_QUEUE};
use crate::faults::plan::{DelayDist, FaultAction};
use crate::faults::tests::SharedBuf;
use crate::faults::{FaultEngine, FaultSpec, Plan, Trace};
use crate::scsi::{opcode, LunAddress};
use crate::virtio::*;

const RING: u16 = 64;
/// Queues of a rig with two request queues: worker 0 has 0, 1 and 2; worker 1 has 3.
const QUEUES: usize = 4;
const BUF_BASE: u64 = 0x50_0000;
const BUF_STEP: u64 = 0x2000;

fn desc_table(q: usize) -> u64 {
    0x1_0000 * (q as u64 + 1)
}
fn avail_ring(q: usize) -> u64 {
    desc_table(q) + 0x400
}
fn used_ring(q: usize) -> u64 {
    desc_table(q) + 0x8000
}

struct Rig {
    f: Fixture,
    backend: VhostUserScsiBackend,
    vrings: Vec<VringRwLock>,
    calls: Vec<EventFd>,
    trace: SharedBuf,
    next_slot: [Cell<u16>; QUEUES],
    request_queues: u16,
    next_buf: Cell<u64>,
}

/// A request posted by the rig: where its response goes.
#[derive(Clone, Copy, Debug)]
struct Posted {
    head: u16,
    resp: u64,
    data_in: u64,
}

fn rig(faults: &[&str], seed: u64) -> Rig {
    let mut plan = Plan {
        seed,
        ..Plan::default()
    };
    for text in faults {
        plan.push(FaultSpec::from_shorthand(text, false).unwrap())
            .unwrap();
    }
    rig_with_plan(plan)
}

fn rig_with_plan(plan: Plan) -> Rig {
    rig_with_queues(plan, 1)
}

fn rig_with_queues(plan: Plan, request_queues: u16) -> Rig {
    let f = fixture();
    let trace = SharedBuf::default();
    let mut engine = FaultEngine::new(plan);
    engine.set_trace(Some(Trace::to_writer(Box::new(trace.clone()))));
    let ctx = FaultContext::new(Arc::new(Mutex::new(engine)), crate::faults::Epoch::start());
    let backend = VhostUserScsiBackend::with_faults(f.target.clone(), request_queues, ctx).unwrap();
    let atomic = GuestMemoryAtomic::new(f.mem.clone());
    backend.update_memory(atomic.clone()).unwrap();
    let mut vrings = Vec::new();
    let mut calls = Vec::new();
    for q in 0..FIRST_REQUEST_QUEUE + usize::from(request_queues) {
        let vring = VringRwLock::new(atomic.clone(), RING).unwrap();
        vring
            .set_queue_info(desc_table(q), avail_ring(q), used_ring(q))
            .unwrap();
        vring.set_queue_size(RING);
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        let call = EventFd::new(EFD_NONBLOCK).unwrap();
        let fd = call.try_clone().unwrap().into_raw_fd();
        // SAFETY: `fd` is a fresh duplicate that nothing else owns.
        vring.set_call(Some(unsafe { File::from_raw_fd(fd) }));
        vrings.push(vring);
        calls.push(call);
    }
    Rig {
        f,
        backend,
        vrings,
        calls,
        trace,
        next_slot: Default::default(),
        request_queues,
        next_buf: Cell::new(BUF_BASE),
    }
}

impl Rig {
    fn buf(&self) -> u64 {
        let at = self.next_buf.get();
        self.next_buf.set(at + BUF_STEP);
        at
    }

    /// Writes a chain of (addr, len, writable) into free descriptor slots and makes it
    /// available; returns its head.
    fn post(&self, q: usize, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_slot[q].get();
        self.next_slot[q].set((head + descs.len() as u16) % RING);
        for (i, &(addr, len, w)) in descs.iter().enumerate() {
            let idx = (head + i as u16) % RING;
            let last = i + 1 == descs.len();
            let mut flags = if w { VRING_DESC_F_WRITE as u16 } else { 0 };
            if !last {
                flags |= VRING_DESC_F_NEXT as u16;
            }
            let at = desc_table(q) + 16 * u64::from(idx);
            let mem = &self.f.mem;
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj((idx + 1) % RING, GuestAddress(at + 14))
                .unwrap();
        }
        let avail_idx: u16 = self
            .f
            .mem
            .read_obj(GuestAddress(avail_ring(q) + 2))
            .unwrap();
        let slot = avail_ring(q) + 4 + 2 * u64::from(avail_idx % RING);
        self.f.mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.f
            .mem
            .write_obj(avail_idx.wrapping_add(1), GuestAddress(avail_ring(q) + 2))
            .unwrap();
        head
    }

    /// Posts a command with request id `id` on the first request queue (not kicked).
    fn command(&self, lun: [u8; 8], cdb: &[u8], id: u64, data_in: u32) -> Posted {
        self.command_on(FIRST_REQUEST_QUEUE, lun, cdb, id, data_in)
    }

    fn command_on(&self, q: usize, lun: [u8; 8], cdb: &[u8], id: u64, data_in: u32) -> Posted {
        let (hdr, resp, din) = (self.buf(), self.buf(), self.buf());
        let mut req = cmd_header(lun, cdb);
        req.id = Le64::from(id);
        self.f.mem.write_obj(req, GuestAddress(hdr)).unwrap();
        self.f
            .mem
            .write_slice(&[0xee; RESP_LEN as usize], GuestAddress(resp))
            .unwrap();
        let mut descs = vec![
            (hdr, size_of::<VirtioScsiCmdReq>() as u32, false),
            (resp, RESP_LEN, true),
        ];
        if data_in > 0 {
            descs.push((din, data_in, true));
        }
        let head = self.post(q, &descs);
        Posted {
            head,
            resp,
            data_in: din,
        }
    }

    /// Posts a command with data-out on the first request queue (not kicked).
    fn command_out(&self, lun: [u8; 8], cdb: &[u8], id: u64, data: &[u8]) -> Posted {
        let (hdr, out, resp) = (self.buf(), self.buf(), self.buf());
        let mut req = cmd_header(lun, cdb);
        req.id = Le64::from(id);
        self.f.mem.write_obj(req, GuestAddress(hdr)).unwrap();
        self.f.mem.write_slice(data, GuestAddress(out)).unwrap();
        let descs = [
            (hdr, size_of::<VirtioScsiCmdReq>() as u32, false),
            (out, data.len() as u32, false),
            (resp, RESP_LEN, true),
        ];
        let head = self.post(FIRST_REQUEST_QUEUE, &descs);
        Posted {
            head,
            resp,
            data_in: 0,
        }
    }

    fn tur(&self, id: u64) -> Posted {
        self.command(lun(0), &[opcode::TEST_UNIT_READY], id, 0)
    }

    /// Posts a TMF on the control queue (not kicked).
    fn tmf(&self, subtype: u32, lun: [u8; 8], id: u64) -> Posted {
        let (hdr, resp) = (self.buf(), self.buf());
        let mut req = tmf(subtype, lun);
        req.id = Le64::from(id);
        self.f.mem.write_obj(req, GuestAddress(hdr)).unwrap();
        self.f.mem.write_obj(0xeeu8, GuestAddress(resp)).unwrap();
        let head = self.post(CONTROL_QUEUE, &[(hdr, 24, false), (resp, 1, true)]);
        Posted {
            head,
            resp,
            data_in: 0,
        }
    }

    /// The vrings worker `thread` was given (see `queues_per_thread`).
    fn worker_vrings(&self, thread: usize) -> &[VringRwLock] {
        match thread {
            0 => &self.vrings[..=FIRST_REQUEST_QUEUE],
            t => &self.vrings[FIRST_REQUEST_QUEUE + t..=FIRST_REQUEST_QUEUE + t],
        }
    }

    /// What the worker serving queue `q` does on a kick of it.
    fn kick(&self, q: usize) {
        let thread = fault_path::thread_of(q);
        let local = if thread == 0 { q } else { 0 };
        assert!(q < FIRST_REQUEST_QUEUE + usize::from(self.request_queues));
        self.backend
            .handle_event(
                local as u16,
                EventSet::IN,
                self.worker_vrings(thread),
                thread,
            )
            .unwrap();
    }

    /// What worker 0 does when its timer fd is readable.
    fn timer(&self) {
        let ev = self.backend.timer_event();
        self.backend
            .handle_event(ev, EventSet::IN, self.worker_vrings(0), 0)
            .unwrap();
    }

    /// Waits (at most `max`) for worker 0's timer fd to become readable.
    fn timer_fires_within(&self, max: Duration) -> bool {
        let fd = self.backend.timer_fd(0).unwrap();
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, max.as_millis() as libc::c_int) };
        n == 1
    }

    /// (head, len) of every used element of queue `q`.
    fn used(&self, q: usize) -> Vec<(u32, u32)> {
        let idx: u16 = self.f.mem.read_obj(GuestAddress(used_ring(q) + 2)).unwrap();
        (0..u64::from(idx))
            .map(|n| {
                let at = used_ring(q) + 4 + 8 * n;
                (
                    self.f.mem.read_obj(GuestAddress(at)).unwrap(),
                    self.f.mem.read_obj(GuestAddress(at + 4)).unwrap(),
                )
            })
            .collect()
    }

    /// Interrupts (call eventfd writes) on queue `q` since the last call.
    fn signals(&self, q: usize) -> u64 {
        self.calls[q].read().unwrap_or(0)
    }

    fn resp(&self, p: Posted) -> VirtioScsiCmdResp {
        self.f.mem.read_obj(GuestAddress(p.resp)).unwrap()
    }

    fn tmf_resp(&self, p: Posted) -> u8 {
        self.f.mem.read_obj(GuestAddress(p.resp)).unwrap()
    }

    /// Trace records without their timestamps.
    fn trace(&self) -> Vec<Value> {
        lock(&self.backend.faults.engine).flush_trace().unwrap();
        let bytes = self.trace.0.lock().unwrap().clone();
        String::from_utf8(bytes)
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("t_us");
                v
            })
            .collect()
    }

    fn trace_events(&self, ev: &str) -> Vec<Value> {
        self.trace().into_iter().filter(|v| v["ev"] == ev).collect()
    }

    fn stats(&self) -> crate::faults::Stats {
        *lock(&self.backend.faults.engine).stats()
    }
}

impl Rig {
    /// Gives the device one 16-byte event buffer; returns (head, address).
    fn event_buffer(&self) -> (u16, u64) {
        let buf = self.buf();
        self.f
            .mem
            .write_slice(&[0xee; 16], GuestAddress(buf))
            .unwrap();
        (self.post(EVENT_QUEUE, &[(buf, 16, true)]), buf)
    }

    fn event_at(&self, buf: u64) -> VirtioScsiEvent {
        self.f.mem.read_obj(GuestAddress(buf)).unwrap()
    }

    /// Serves a command posted with `command` and returns its response.
    fn run(&self, lun: [u8; 8], cdb: &[u8], id: u64, data_in: u32) -> (Posted, VirtioScsiCmdResp) {
        let p = self.command(lun, cdb, id, data_in);
        self.kick(FIRST_REQUEST_QUEUE);
        (p, self.resp(p))
    }
}

/// Position of the first trace record with these fields.
fn position(trace: &[Value], want: &[(&str, Value)]) -> usize {
    trace
        .iter()
        .position(|v| want.iter().all(|(k, x)| &v[*k] == x))
        .unwrap_or_else(|| panic!("no trace record with {want:?} in {trace:#?}"))
}

#[test]
fn drop_interrupt_leaves_the_used_entry_but_no_signal() {
    let r = rig(&["drop-interrupt:queue=request"], 0);
    let p = r.tur(7);
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(
        r.used(FIRST_REQUEST_QUEUE),
        vec![(u32::from(p.head), RESP_LEN)]
    );
    assert_eq!(r.resp(p).response, VIRTIO_SCSI_S_OK);
    assert_eq!(
        r.signals(FIRST_REQUEST_QUEUE),
        0,
        "call eventfd not written"
    );
    let s = r.trace_events("signal-suppressed");
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["reason"], "fault");
    assert_eq!(s[0]["id"], 7);
    assert!(r.trace_events("signal").is_empty());
    assert_eq!(r.stats().signals_suppressed_fault, 1);
}

#[test]
fn without_faults_every_completion_signals_and_is_traced() {
    let r = rig(&[], 0);
    let p = r.tur(1);
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(r.used(FIRST_REQUEST_QUEUE).len(), 1);
    assert_eq!(r.resp(p).response, VIRTIO_SCSI_S_OK);
    assert_eq!(r.signals(FIRST_REQUEST_QUEUE), 1);
    let t = r.trace();
    let req = position(&t, &[("ev", "request".into()), ("id", 1.into())]);
    let done = position(&t, &[("ev", "complete".into()), ("response", "ok".into())]);
    let sig = position(&t, &[("ev", "signal".into()), ("queue", 2.into())]);
    assert!(req < done && done < sig);
}

#[test]
fn delay_completes_only_when_the_timer_fires() {
    let r = rig(&["delay:delay_ms=30"], 0);
    let start = Instant::now();
    let p = r.command(lun(0), &read10(3, 1), 5, 512);
    r.kick(FIRST_REQUEST_QUEUE);
    assert!(r.used(FIRST_REQUEST_QUEUE).is_empty(), "not complete yet");
    assert_eq!(r.backend.inflight_len(FIRST_REQUEST_QUEUE), 1);
    // A timer fired early must not complete it.
    r.timer();
    assert!(r.used(FIRST_REQUEST_QUEUE).is_empty());
    assert!(r.timer_fires_within(Duration::from_secs(5)), "timer armed");
    assert!(start.elapsed() >= Duration::from_millis(30));
    r.timer();
    assert_eq!(
        r.used(FIRST_REQUEST_QUEUE),
        vec![(u32::from(p.head), RESP_LEN + 512)]
    );
    assert_eq!(r.resp(p).response, VIRTIO_SCSI_S_OK);
    let mut block = [0u8; 512];
    r.f.mem
        .read_slice(&mut block, GuestAddress(p.data_in))
        .unwrap();
    assert_eq!(block, [3u8; 512], "executed when due");
    assert_eq!(r.signals(FIRST_REQUEST_QUEUE), 1);
    assert_eq!(r.backend.inflight_len(FIRST_REQUEST_QUEUE), 0);
    let req = &r.trace_events("request")[0];
    assert_eq!(
        (
            &req["op"],
            &req["lba"],
            &req["blocks"],
            &req["dir"],
            &req["id"]
        ),
        (
            &"read-10".into(),
            &3.into(),
            &1.into(),
            &"read".into(),
            &5.into()
        )
    );
    let f = r.trace_events("fault");
    assert_eq!(f[0]["kind"], "delay");
    assert_eq!(f[0]["delay_us"], 30_000);
}

#[test]
fn spurious_interrupt_signals_with_no_used_entry() {
    let r = rig(&["spurious-interrupt:at_ms=1,burst=3"], 0);
    // The worker learns its vrings on its first event.
    r.kick(FIRST_REQUEST_QUEUE);
    assert!(r.timer_fires_within(Duration::from_secs(5)));
    r.timer();
    assert_eq!(r.signals(FIRST_REQUEST_QUEUE), 3);
    assert!(r.used(FIRST_REQUEST_QUEUE).is_empty());
    let s = r.trace_events("spurious-signal");
    assert_eq!(s.len(), 1);
    assert_eq!(s[0]["count"], 3);
    assert_eq!(r.stats().spurious_signals, 3);
}

#[test]
fn status_overrides_replace_the_result() {
    let r = rig(
        &[
            "status:opcode=read-10,status=check-condition,sense_key=3,asc=0x11",
            "status:opcode=test-unit-ready,status=task-set-full",
            "status:opcode=inquiry,status=transport-failure",
        ],
        0,
    );
    let read = r.command(lun(0), &read10(0, 1), 1, 512);
    let tur = r.tur(2);
    let inq = r.command(lun(0), &[opcode::INQUIRY, 0, 0, 0, 96, 0], 3, 96);
    r.kick(FIRST_REQUEST_QUEUE);
    let resp = r.resp(read);
    assert_eq!((resp.response, resp.status), (VIRTIO_SCSI_S_OK, 0x02));
    assert_eq!((resp.sense[2] & 0xf, resp.sense[12]), (3, 0x11));
    assert_eq!(u32::from(resp.resid), 512, "nothing transferred");
    assert_eq!(r.resp(tur).status, 0x28);
    assert_eq!(r.resp(inq).response, VIRTIO_SCSI_S_TRANSPORT_FAILURE);
    assert_eq!(r.used(FIRST_REQUEST_QUEUE).len(), 3);
    let done = r.trace_events("complete");
    assert_eq!(done[0]["status"], 2);
    assert_eq!(done[2]["response"], "transport-failure");
}

#[test]
fn short_transfer_reports_a_residual() {
    let r = rig(
        &["status:opcode=read-10,status=short-transfer,residual=100"],
        0,
    );
    let read = r.command(lun(0), &read10(0, 1), 1, 512);
    r.kick(FIRST_REQUEST_QUEUE);
    let resp = r.resp(read);
    assert_eq!((resp.response, resp.status), (VIRTIO_SCSI_S_OK, 0));
    assert_eq!(u32::from(resp.resid), 100);
}

#[test]
fn corrupt_flips_read_data() {
    let mut plan = Plan::from_toml_str(
        "allow_corruption = true\n[[fault]]\nkind = \"corrupt\"\nopcode = \"read-10\"\nbytes = 4\n",
    )
    .unwrap();
    plan.seed = 1;
    let r = rig_with_plan(plan);
    let read = r.command(lun(0), &read10(2, 1), 1, 512);
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(r.resp(read).response, VIRTIO_SCSI_S_OK);
    let mut block = [0u8; 512];
    r.f.mem
        .read_slice(&mut block, GuestAddress(read.data_in))
        .unwrap();
    let flipped = block.iter().filter(|&&b| b != 2).count();
    assert!((1..=4).contains(&flipped), "{flipped} bytes differ");
}

#[test]
fn stopping_a_vring_drops_what_it_holds() {
    let r = rig(&["lose"], 0);
    r.tur(1);
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(r.backend.inflight_len(FIRST_REQUEST_QUEUE), 1);
    r.backend.stop_vring(FIRST_REQUEST_QUEUE as u32).unwrap();
    assert_eq!(r.backend.inflight_len(FIRST_REQUEST_QUEUE), 0);
    assert!(r.used(FIRST_REQUEST_QUEUE).is_empty());
}

#[test]
fn same_plan_seed_and_script_give_the_same_trace() {
    let faults = [
        "drop-interrupt:probability=0.5",
        "status:opcode=test-unit-ready,status=busy,probability=0.3",
        "lose:opcode=read-10,probability=0.4",
    ];
    let run = |seed| {
        let r = rig(&faults, seed);
        for id in 0..12u64 {
            if id % 3 == 0 {
                r.command(lun(0), &read10(id as u32, 1), id, 512);
            } else {
                r.tur(id);
            }
            r.kick(FIRST_REQUEST_QUEUE);
        }
        r.tmf(VIRTIO_SCSI_T_TMF_ABORT_TASK_SET, lun(0), 0);
        r.kick(CONTROL_QUEUE);
        (r.trace(), r.stats())
    };
    let (a, sa) = run(7);
    let (b, sb) = run(7);
    assert_eq!(a, b);
    assert_eq!(sa, sb);
    assert!(
        a.iter().any(|v| v["ev"] == "fault"),
        "the plan did something"
    );
    let (c, _) = run(8);
    assert_ne!(a, c, "another seed decides differently");
}

#[test]
fn timer_fd_is_registered_above_the_queue_ids() {
    let r = rig(&[], 0);
    assert_eq!(r.backend.timer_event() as usize, r.backend.num_queues() + 1);
    assert!(r.backend.timer_fd(0).is_some());
    let plain = VhostUserScsiBackend::new(r.f.target.clone(), 1);
    assert!(plain.timer_fd(0).is_none(), "no engine, no timer");
}

/// The rig without its trace: completions are batched, one interrupt decision per pass.
fn untraced(faults: &[&str]) -> Rig {
    let r = rig(faults, 0);
    lock(&r.backend.faults.engine).set_trace(None);
    r
}

#[test]
fn without_a_trace_one_pass_signals_once() {
    let r = untraced(&["status:lun=7,status=busy"]);
    let posted: Vec<Posted> = (1..=3).map(|id| r.tur(id)).collect();
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(r.used(FIRST_REQUEST_QUEUE).len(), 3);
    for p in posted {
        assert_eq!(r.resp(p).response, VIRTIO_SCSI_S_OK);
    }
    assert_eq!(
        r.signals(FIRST_REQUEST_QUEUE),
        1,
        "one interrupt for the pass"
    );
    let st = r.stats();
    assert_eq!((st.commands, st.completions, st.signals_sent), (3, 3, 1));
}

#[test]
fn a_dropped_interrupt_in_a_batch_drops_only_its_own() {
    // The second of three commands loses its interrupt: the first is signalled before
    // it, the third after it.
    let r = untraced(&["drop-interrupt:every=2"]);
    for id in 1..=3 {
        r.tur(id);
    }
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(r.used(FIRST_REQUEST_QUEUE).len(), 3);
    assert_eq!(r.signals(FIRST_REQUEST_QUEUE), 2);
    let st = r.stats();
    assert_eq!((st.signals_sent, st.signals_suppressed_fault), (2, 1));

    // With EVENT_IDX the driver asks for the interrupt of the second completion, which
    // the fault drops: as without batching, nothing signals the pass.
    let r = untraced(&["drop-interrupt:every=2"]);
    r.backend.set_event_idx(true);
    r.vrings[FIRST_REQUEST_QUEUE].set_queue_event_idx(true);
    let used_event = avail_ring(FIRST_REQUEST_QUEUE) + 4 + 2 * u64::from(RING);
    r.f.mem.write_obj(1u16, GuestAddress(used_event)).unwrap();
    for id in 1..=3 {
        r.tur(id);
    }
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(r.used(FIRST_REQUEST_QUEUE).len(), 3);
    assert_eq!(r.signals(FIRST_REQUEST_QUEUE), 0);
    let st = r.stats();
    assert_eq!(
        (
            st.signals_sent,
            st.signals_suppressed_fault,
            st.signals_suppressed_event_idx
        ),
        (0, 1, 2)
    );
}

#[test]
fn with_a_trace_every_completion_is_decided_alone() {
    let r = rig(&[], 0);
    for id in 1..=3 {
        r.tur(id);
    }
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(r.signals(FIRST_REQUEST_QUEUE), 3);
    let ids: Vec<Value> = r
        .trace_events("signal")
        .into_iter()
        .map(|v| v["id"].clone())
        .collect();
    assert_eq!(ids, [1, 2, 3].map(Value::from));
}

/// With EVENT_IDX on, claims a ring and one more in the request queue's avail index
/// (one chain is really posted) and kicks it on a thread of its own, so a handler that
/// spins fails the test instead of hanging it. Returns the warnings it logged.
fn kick_with_avail_index_a_ring_ahead(r: Rig) -> (usize, Rig) {
    r.backend.set_event_idx(true);
    r.vrings[FIRST_REQUEST_QUEUE].set_queue_event_idx(true);
    r.f.mem.write_obj(RING + 1, avail_index_addr()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        r.kick(FIRST_REQUEST_QUEUE);
        tx.send((take_warnings().len(), r)).unwrap();
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the queue handler returns")
}

fn avail_index_addr() -> GuestAddress {
    GuestAddress(avail_ring(FIRST_REQUEST_QUEUE) + 2)
}

#[test]
fn avail_index_more_than_a_ring_ahead_does_not_hang_the_fault_path() {
    // As without faults (see tests.rs): two empty passes end the handler.
    let r = rig(&["drop-interrupt:every=2"], 0);
    r.tur(1);
    let (warnings, r) = kick_with_avail_index_a_ring_ahead(r);
    assert_eq!(warnings, 1);
    assert!(r.used(FIRST_REQUEST_QUEUE).is_empty());
    r.f.mem.write_obj(1u16, avail_index_addr()).unwrap();
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(r.used(FIRST_REQUEST_QUEUE).len(), 1);
}

#[test]
fn avail_index_more_than_a_ring_ahead_does_not_hang_the_batched_fault_path() {
    // Without a trace the pass batches its interrupt decision: the two empty passes still
    // end the handler, and what the next pass completes is still signalled.
    let r = untraced(&["status:lun=7,status=busy"]);
    let p = r.tur(1);
    let (warnings, r) = kick_with_avail_index_a_ring_ahead(r);
    assert_eq!(warnings, 1);
    assert!(r.used(FIRST_REQUEST_QUEUE).is_empty());
    assert_eq!(r.signals(FIRST_REQUEST_QUEUE), 0, "nothing to signal");
    r.f.mem.write_obj(1u16, avail_index_addr()).unwrap();
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(r.used(FIRST_REQUEST_QUEUE).len(), 1);
    assert_eq!(r.resp(p).response, VIRTIO_SCSI_S_OK);
    assert_eq!(r.signals(FIRST_REQUEST_QUEUE), 1, "the batch was flushed");
    assert_eq!(r.stats().signals_sent, 1);
}

#[test]
fn delays_adding_up_past_the_largest_time_do_not_panic() {
    // A plan bounds each delay (an hour), but a plan built in code may hold many of
    // u64::MAX ms: the engine saturates their sum at Duration::MAX, and `now + delay`
    // overflowed. Read with a small delay, then raised past the bound.
    let mut plan = Plan::default();
    let small = serde_json::json!({"kind": "delay", "delay_ms": 1, "request": "any"});
    for _ in 0..1001 {
        let mut f = FaultSpec::from_json(small.clone(), false).unwrap();
        f.action = FaultAction::Delay(DelayDist::Fixed(Duration::from_millis(u64::MAX)));
        plan.push(f).unwrap();
    }
    let r = rig_with_plan(plan);
    r.tur(1);
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(
        r.backend.inflight_len(FIRST_REQUEST_QUEUE),
        1,
        "held, not lost"
    );
    // A TMF (slow or delayed) takes the same path, and the timer is armed for the
    // earliest of them.
    r.tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0), 0);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.backend.inflight_len(CONTROL_QUEUE), 1);
    assert_eq!(
        r.used(FIRST_REQUEST_QUEUE).len(),
        1,
        "the LU reset ended the held command"
    );
    assert!(
        r.backend.rearm_timer(0).is_ok(),
        "a timer for eons is armed"
    );
    r.timer();
    assert!(
        r.used(CONTROL_QUEUE).is_empty(),
        "the reset's answer is due in eons"
    );
    r.backend.reset_device();
    assert_eq!(r.backend.inflight_len(CONTROL_QUEUE), 0);
}

#[test]
fn event_idx_suppression_is_traced_apart_from_the_fault() {
    let r = rig(&["drop-interrupt:every=2"], 0);
    r.backend.set_event_idx(true);
    r.vrings[FIRST_REQUEST_QUEUE].set_queue_event_idx(true);
    // used_event (after the avail ring) far ahead: the driver wants no interrupt yet.
    let used_event = avail_ring(FIRST_REQUEST_QUEUE) + 4 + 2 * u64::from(RING);
    r.f.mem.write_obj(10u16, GuestAddress(used_event)).unwrap();
    r.tur(1);
    r.kick(FIRST_REQUEST_QUEUE);
    // used_event = 1: the second completion is wanted, but the fault drops it.
    r.f.mem.write_obj(1u16, GuestAddress(used_event)).unwrap();
    r.tur(2);
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(r.used(FIRST_REQUEST_QUEUE).len(), 2);
    assert_eq!(r.signals(FIRST_REQUEST_QUEUE), 0);
    let s = r.trace_events("signal-suppressed");
    assert_eq!(s.len(), 2);
    assert_eq!(
        (s[0]["id"].clone(), s[0]["reason"].clone()),
        (1.into(), "event-idx".into())
    );
    assert_eq!(
        (s[1]["id"].clone(), s[1]["reason"].clone()),
        (2.into(), "fault".into())
    );
    let st = r.stats();
    assert_eq!(
        (st.signals_suppressed_event_idx, st.signals_suppressed_fault),
        (1, 1)
    );
}

#[test]
fn corrupt_flips_the_data_a_write_stores() {
    let plan = Plan::from_toml_str(
        "allow_corruption = true\n[[fault]]\nkind = \"corrupt\"\nopcode = \"write-10\"\nbytes = 3\n",
    )
    .unwrap();
    let r = rig_with_plan(plan);
    let data = [0x5a_u8; 512];
    let w = r.command_out(lun(0), &write10(4, 1), 1, &data);
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(r.resp(w).response, VIRTIO_SCSI_S_OK);
    assert_eq!(r.resp(w).status, 0);
    let stored = r.f.file_block(0, 4);
    let flipped = stored.iter().filter(|&&b| b != 0x5a).count();
    assert!((1..=3).contains(&flipped), "{flipped} bytes differ");
    let mut guest = [0u8; 512];
    // The guest's own buffer is untouched.
    let out_addr = w.resp - BUF_STEP;
    r.f.mem
        .read_slice(&mut guest, GuestAddress(out_addr))
        .unwrap();
    assert_eq!(guest, data);
}

#[test]
fn cdb_blocks_cover_every_read_and_write_size() {
    let cdb = |bytes: &[u8]| {
        let mut c = [0u8; VIRTIO_SCSI_CDB_SIZE];
        c[..bytes.len()].copy_from_slice(bytes);
        c
    };
    assert_eq!(
        fault_path::command::cdb_blocks(&cdb(&[0x08, 0x1f, 0xff, 0xfe, 0])),
        Some((0x1f_fffe, 256))
    );
    assert_eq!(
        fault_path::command::cdb_blocks(&cdb(&read10(7, 3))),
        Some((7, 3))
    );
    assert_eq!(
        fault_path::command::cdb_blocks(&cdb(&[0xaa, 0, 0, 0, 1, 0, 0, 0, 0, 9, 0, 0])),
        Some((256, 9))
    );
    let mut r16 = [0u8; 16];
    r16[0] = 0x88;
    r16[2..10].copy_from_slice(&(1u64 << 40).to_be_bytes());
    r16[10..14].copy_from_slice(&8u32.to_be_bytes());
    assert_eq!(
        fault_path::command::cdb_blocks(&cdb(&r16)),
        Some((1 << 40, 8))
    );
    assert_eq!(
        fault_path::command::cdb_blocks(&cdb(&[opcode::INQUIRY])),
        None
    );
}

#[test]
fn device_reset_drops_a_delayed_request_for_good() {
    let r = rig(&["delay:delay_ms=1"], 0);
    r.tur(1);
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(r.backend.inflight_len(FIRST_REQUEST_QUEUE), 1);
    r.backend.reset_device();
    std::thread::sleep(Duration::from_millis(5));
    r.timer();
    assert!(r.used(FIRST_REQUEST_QUEUE).is_empty(), "never completed");
    assert_eq!(r.signals(FIRST_REQUEST_QUEUE), 0);
    assert!(r.trace_events("complete").is_empty());
    assert_eq!(r.trace_events("device-reset").len(), 1);
}

#[test]
fn idle_engine_without_trace_skips_describing_commands_but_counts_them() {
    let engine = Arc::new(Mutex::new(FaultEngine::new(Plan::default())));
    assert!(lock(&engine).is_idle() && !lock(&engine).tracing());
    // The rig's device, but with an engine that has no trace.
    let mut r = rig(&[], 0);
    let ctx = FaultContext::new(engine.clone(), crate::faults::Epoch::start());
    r.backend = VhostUserScsiBackend::with_faults(r.f.target.clone(), 1, ctx).unwrap();
    let atomic = GuestMemoryAtomic::new(r.f.mem.clone());
    r.backend.update_memory(atomic).unwrap();
    for id in 0..3 {
        let (_, resp) = r.run(lun(0), &[opcode::TEST_UNIT_READY], id, 0);
        assert_eq!((resp.response, resp.status), (VIRTIO_SCSI_S_OK, 0));
    }
    let stats = *lock(&engine).stats();
    assert_eq!(
        (stats.commands, stats.completions, stats.signals_sent),
        (3, 3, 3)
    );
    // A rule (or a trace) makes the time matter again.
    lock(&engine)
        .add_fault(FaultSpec::from_shorthand("lose", false).unwrap())
        .unwrap();
    assert!(!lock(&engine).is_idle());
    // Not idle: the command is described to the rule, which loses it.
    let lost = r.command(lun(0), &[opcode::TEST_UNIT_READY], 9, 0);
    r.kick(FIRST_REQUEST_QUEUE);
    assert_eq!(r.backend.inflight_len(FIRST_REQUEST_QUEUE), 1);
    assert_eq!(r.resp(lost).response, 0xee, "not answered");
    assert_eq!(lock(&engine).stats().commands, 4);
    let mut e = FaultEngine::new(Plan::default());
    e.set_trace(Some(Trace::to_writer(Box::new(SharedBuf::default()))));
    assert!(!e.is_idle() && e.tracing());
}

mod bad_input;
mod events;
mod hotplug;
mod ring_epochs;
mod screen;
mod tmf;
mod tmf_faults;
