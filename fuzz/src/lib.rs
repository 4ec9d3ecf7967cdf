//! What the fuzz targets share: guest memory with a hole, a two-LU target, descriptor
//! chains laid out from fuzz input, a device whose control, event and request queues are
//! driven through `VhostUserBackend::handle_event` as the daemon drives them, and the
//! checks every response and every used-ring entry must pass.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once, OnceLock};

use flakyhba_backend::faults::{Epoch, FaultEngine};
use flakyhba_backend::scsi::{Lun, LunAddress, LunSpec, Target};
use flakyhba_backend::vhu_scsi::{
    FaultContext, VhostUserScsiBackend, CONTROL_QUEUE, EVENT_QUEUE, FIRST_REQUEST_QUEUE,
};
use flakyhba_backend::virtio::{
    VIRTIO_SCSI_F_CHANGE, VIRTIO_SCSI_F_HOTPLUG, VIRTIO_SCSI_SENSE_SIZE, VIRTIO_SCSI_S_BAD_TARGET,
    VIRTIO_SCSI_S_FAILURE, VIRTIO_SCSI_S_FUNCTION_COMPLETE, VIRTIO_SCSI_S_FUNCTION_REJECTED,
    VIRTIO_SCSI_S_FUNCTION_SUCCEEDED, VIRTIO_SCSI_S_INCORRECT_LUN, VIRTIO_SCSI_S_OK,
};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

/// Region 0 holds the queues (below DATA_BASE) and the data area; a 4 KiB hole follows,
/// then region 1.
pub const REGION0: (u64, usize) = (0, 0x1_0000);
pub const REGION1: (u64, usize) = (0x1_1000, 0x1000);
pub const DATA_BASE: u64 = 0x1000;
/// Every ring lives below this address: a chain that writes there, or keeps an indirect
/// table there, rewrites the queues while it is served.
pub const QUEUE_PAGE: (u64, u64) = (0, DATA_BASE);
pub const QUEUE_SIZE: u16 = 32;

const CTRL_AT: u64 = 0x400;
const REQ_AT: u64 = 0x000;
const EVT_AT: u64 = 0xc00;
const EVT_SIZE: u16 = 4;
/// MockSplitQueue puts its used ring over the tail of the avail ring, so the vrings get
/// their own.
const CTRL_USED: u64 = 0xa00;
const REQ_USED: u64 = 0x800;
const EVT_USED: u64 = 0xc80;
/// The event buffer the driver leaves, when it leaves one.
const EVT_BUF: (u64, u32) = (0xd00, 16);

/// Sizes of the wire structs (virtio 5.6.6): request header with a 32-byte CDB, response
/// with 96 bytes of sense.
pub const CMD_REQ_LEN: u64 = 51;
pub const CMD_RESP_LEN: usize = 108;

// ---- logging: guest mistakes are one warning each ----

static WARNINGS: AtomicUsize = AtomicUsize::new(0);
/// FUZZ_SHOW_LOG=1 prints the warnings (when reproducing a crash).
static SHOW: OnceLock<bool> = OnceLock::new();

struct CountingLogger;

impl log::Log for CountingLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::Level::Warn
    }
    fn log(&self, r: &log::Record) {
        if r.level() <= log::Level::Warn {
            WARNINGS.fetch_add(1, Ordering::Relaxed);
            if *SHOW.get_or_init(|| std::env::var_os("FUZZ_SHOW_LOG").is_some()) {
                eprintln!("{}: {}", r.level(), r.args());
            }
        }
    }
    fn flush(&self) {}
}

/// Counts warnings and errors (printed only with FUZZ_SHOW_LOG; debug records are never
/// formatted).
pub fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        log::set_logger(&CountingLogger).expect("the only logger");
        log::set_max_level(log::LevelFilter::Warn);
    });
}

/// Warnings and errors logged since the last call.
pub fn take_warnings() -> usize {
    WARNINGS.swap(0, Ordering::Relaxed)
}

// ---- fixtures ----

thread_local! {
    /// One guest memory for every input (libFuzzer runs them on one thread): mapping,
    /// faulting in and unmapping fresh memory for each chain cost more than the backend's
    /// work on it. [`guest_memory`] puts it back to the state of a fresh mapping.
    static MEMORY: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[
        (GuestAddress(REGION0.0), REGION0.1),
        (GuestAddress(REGION1.0), REGION1.1),
    ])
    .expect("guest memory");
    /// Buffers of [`snapshot`], reused.
    static SNAPSHOTS: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

static ZEROES: [u8; REGION0.1] = [0; REGION0.1];

/// Guest memory as freshly mapped, with `payload` (as much as fits) at DATA_BASE. Every
/// call returns the same memory: the previous user must be done with it.
pub fn guest_memory(payload: &[u8]) -> GuestMemoryMmap {
    let mem = MEMORY.with(GuestMemoryMmap::clone);
    mem.write_slice(&ZEROES[..REGION0.1], GuestAddress(REGION0.0))
        .expect("region 0");
    mem.write_slice(&ZEROES[..REGION1.1], GuestAddress(REGION1.0))
        .expect("region 1");
    let room = REGION0.1 - DATA_BASE as usize;
    mem.write_slice(&payload[..payload.len().min(room)], GuestAddress(DATA_BASE))
        .expect("payload fits region 0");
    mem
}

/// LUN 0:0, 64 blocks of 512 bytes, read-write; LU 1:3, 16 blocks of 4096, read-only.
pub fn target(power_on: bool) -> Target {
    let small = Lun::open_spec(&LunSpec::memory(64 * 512)).expect("memory LU");
    let mut big_blocks = LunSpec::memory(16 * 4096);
    big_blocks.block_size = 4096;
    big_blocks.read_only = true;
    big_blocks.address = Some(LunAddress { target: 1, lun: 3 });
    let big = Lun::open_spec(&big_blocks).expect("memory LU");
    let t = Target::new(vec![small, big]).expect("two LUs");
    if power_on {
        t.power_on();
    }
    t
}

pub fn overlaps((a, alen): (u64, u64), (b, blen): (u64, u64)) -> bool {
    a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

/// A snapshot of all guest memory, in a buffer reused from an earlier snapshot when one
/// was given back with [`recycle`].
pub fn snapshot(mem: &GuestMemoryMmap) -> Vec<u8> {
    let mut buf = SNAPSHOTS
        .with(|s| s.borrow_mut().pop())
        .unwrap_or_else(|| vec![0u8; REGION0.1 + REGION1.1]);
    let (a, b) = buf.split_at_mut(REGION0.1);
    mem.read_slice(a, GuestAddress(REGION0.0))
        .expect("region 0");
    mem.read_slice(b, GuestAddress(REGION1.0))
        .expect("region 1");
    buf
}

/// Gives a snapshot's buffer back for the next one.
pub fn recycle(snapshot: Vec<u8>) {
    SNAPSHOTS.with(|s| s.borrow_mut().push(snapshot));
}

fn guest_address(snapshot_index: usize) -> u64 {
    if snapshot_index < REGION0.1 {
        REGION0.0 + snapshot_index as u64
    } else {
        REGION1.0 + (snapshot_index - REGION0.1) as u64
    }
}

/// Asserts that every byte that changed between the snapshots is inside `writable`.
pub fn assert_changes_within(before: &[u8], after: &[u8], writable: &[(u64, u64)]) {
    // Whole pages by memcmp first: a byte loop over all of guest memory would be traced
    // by the coverage instrumentation and slow every run down.
    for (page, (b, a)) in before.chunks(4096).zip(after.chunks(4096)).enumerate() {
        if b == a {
            continue;
        }
        for (i, _) in b.iter().zip(a).enumerate().filter(|(_, (x, y))| x != y) {
            let addr = guest_address(page * 4096 + i);
            assert!(
                writable
                    .iter()
                    .any(|&(start, len)| addr >= start && addr - start < len),
                "byte at {addr:#x} changed outside every writable descriptor"
            );
        }
    }
}

// ---- chains ----

/// Which queue a chain is posted on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    Control,
    Request,
}

/// A chain as the device will walk it (indirect tables resolved).
#[derive(Clone, Debug, Default)]
pub struct ChainInfo {
    pub writable: Vec<(u64, u64)>,
    pub writable_bytes: u64,
    /// Every device-readable byte (virtio-queue's Reader counts them all).
    pub readable_bytes: u64,
    /// Indirect tables named by the chain's direct descriptors.
    pub tables: Vec<(u64, u64)>,
}

impl ChainInfo {
    pub fn of<M>(chain: DescriptorChain<M>, raw: &[RawDescriptor]) -> ChainInfo
    where
        M: std::ops::Deref<Target = GuestMemoryMmap>,
    {
        let mut info = ChainInfo::default();
        for d in chain {
            let span = (d.addr().0, u64::from(d.len()));
            if d.is_write_only() {
                info.writable.push(span);
                info.writable_bytes += span.1;
            } else {
                info.readable_bytes += span.1;
            }
        }
        info.tables = raw
            .iter()
            .map(|d| SplitDescriptor::from(*d))
            .filter(|d| d.flags() & VRING_DESC_F_INDIRECT as u16 != 0)
            .map(|d| (d.addr().0, u64::from(d.len())))
            .collect();
        info
    }

    /// Whether serving the chain can rewrite a ring or a descriptor table: then the chain
    /// the device walks is not the one described here, and only "no panic" is checked.
    pub fn rewrites_queues(infos: &[ChainInfo]) -> bool {
        let tables: Vec<(u64, u64)> = infos
            .iter()
            .flat_map(|i| i.tables.iter().copied())
            .chain([QUEUE_PAGE])
            .collect();
        let table_in_queue_page = infos
            .iter()
            .flat_map(|i| &i.tables)
            .any(|&t| overlaps(t, QUEUE_PAGE));
        table_in_queue_page
            || infos
                .iter()
                .flat_map(|i| &i.writable)
                .any(|&w| tables.iter().any(|&t| overlaps(w, t)))
    }

    /// Whether no two writable buffers (of these chains) share a byte, so that each
    /// response can be read back from guest memory.
    pub fn disjoint(infos: &[ChainInfo]) -> bool {
        let all: Vec<(u64, u64)> = infos
            .iter()
            .flat_map(|i| i.writable.iter().copied())
            .filter(|w| w.1 > 0)
            .collect();
        all.iter()
            .enumerate()
            .all(|(i, &a)| all[i + 1..].iter().all(|&b| !overlaps(a, b)))
    }

    /// The first `n` bytes of the writable buffers, as the device left them.
    pub fn read_writable(&self, mem: &GuestMemoryMmap, n: usize) -> Option<Vec<u8>> {
        let mut out = Vec::with_capacity(n);
        for &(addr, len) in &self.writable {
            if out.len() == n {
                break;
            }
            let take = (n - out.len()).min(usize::try_from(len).ok()?);
            let start = out.len();
            out.resize(start + take, 0);
            mem.read_slice(&mut out[start..], GuestAddress(addr)).ok()?;
        }
        (out.len() == n).then_some(out)
    }
}

// ---- response checks ----

/// SAM-5 status codes (GOOD, CHECK CONDITION, CONDITION MET, BUSY, RESERVATION CONFLICT,
/// TASK SET FULL, ACA ACTIVE, TASK ABORTED).
pub const SAM_STATUS: [u8; 8] = [0x00, 0x02, 0x04, 0x08, 0x18, 0x28, 0x30, 0x40];
/// Responses a TMF may get (5.6.6.2).
pub const TMF_RESPONSES: [u8; 6] = [
    VIRTIO_SCSI_S_FUNCTION_COMPLETE,
    VIRTIO_SCSI_S_BAD_TARGET,
    VIRTIO_SCSI_S_FAILURE,
    VIRTIO_SCSI_S_FUNCTION_SUCCEEDED,
    VIRTIO_SCSI_S_FUNCTION_REJECTED,
    VIRTIO_SCSI_S_INCORRECT_LUN,
];

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A command response (`struct virtio_scsi_resp_cmd`) as the guest reads it.
pub fn check_cmd_response(r: &[u8], info: &ChainInfo) {
    let (sense_len, resid) = (le32(&r[0..4]), le32(&r[4..8]));
    let (status, response) = (r[10], r[11]);
    assert!(
        response <= VIRTIO_SCSI_S_FAILURE,
        "response {response} is no VIRTIO_SCSI_S_* code"
    );
    assert!(
        sense_len as usize <= VIRTIO_SCSI_SENSE_SIZE,
        "sense_len {sense_len} > {VIRTIO_SCSI_SENSE_SIZE}"
    );
    if response == VIRTIO_SCSI_S_OK {
        assert!(SAM_STATUS.contains(&status), "status {status:#x}");
        if status == 0x02 {
            // Fixed (70h/71h, 18 bytes) or descriptor (72h/73h, at least 8) sense data.
            assert!(
                sense_len >= 8,
                "CHECK CONDITION with {sense_len} sense bytes"
            );
            let code = r[12] & 0x7f;
            assert!(
                (0x70..=0x73).contains(&code),
                "sense response code {code:#x}"
            );
        } else {
            assert_eq!(sense_len, 0, "sense data with status {status:#x}");
        }
    }
    // The residual counts bytes of the data buffer (5.6.6.1).
    let buffer = info
        .writable_bytes
        .saturating_sub(CMD_RESP_LEN as u64)
        .max(info.readable_bytes.saturating_sub(CMD_REQ_LEN));
    assert!(
        u64::from(resid) <= buffer,
        "residual {resid} > {buffer}-byte data buffer"
    );
}

/// A control response: a TMF's single response byte, or an AN response of 5 bytes.
pub fn check_control_response(used: u32, r: &[u8]) {
    match used {
        1 => assert!(
            TMF_RESPONSES.contains(&r[0]),
            "TMF response {} is no TMF code",
            r[0]
        ),
        5 => {
            assert_eq!(le32(&r[0..4]), 0, "event_actual: no events are supported");
            assert_eq!(r[4], VIRTIO_SCSI_S_OK, "AN response");
        }
        other => panic!("control response of {other} bytes"),
    }
}

// ---- the device ----

struct Ring {
    vq_at: u64,
    size: u16,
    used: u64,
    /// Chains posted so far; head index of each.
    heads: Vec<u16>,
    infos: Vec<ChainInfo>,
    /// Chains made available so far (the avail index the driver wrote last).
    kicked: u16,
    /// Used entries already checked, and the heads they completed.
    seen_used: u16,
    completed: HashSet<u16>,
}

impl Ring {
    fn new(vq_at: u64, used: u64) -> Ring {
        Ring {
            vq_at,
            size: QUEUE_SIZE,
            used,
            heads: Vec::new(),
            infos: Vec::new(),
            kicked: 0,
            seen_used: 0,
            completed: HashSet::new(),
        }
    }
}

/// A device with one request queue on fresh guest memory, served by `handle_event` as a
/// vhost-user worker would, with or without a fault engine.
pub struct Device {
    pub mem: GuestMemoryMmap,
    pub target: Arc<Target>,
    pub backend: VhostUserScsiBackend,
    pub engine: Option<Arc<Mutex<FaultEngine>>>,
    /// Control, event, request: the vrings of worker 0, in the order of its queue mask.
    vrings: [VringRwLock; 3],
    ctrl: Ring,
    req: Ring,
    event_buffer: bool,
    /// A chain rewrites rings or tables: only "no panic" is checked.
    pub wild: bool,
    disjoint: bool,
}

/// How the device is set up.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeviceOptions {
    pub power_on: bool,
    pub event_idx: bool,
    /// The driver left one buffer on the event queue and acked HOTPLUG and CHANGE.
    pub event_buffer: bool,
}

fn vring(
    atomic: &GuestMemoryAtomic<GuestMemoryMmap>,
    at: u64,
    size: u16,
    used: u64,
) -> VringRwLock {
    let v = VringRwLock::new(atomic.clone(), size).expect("vring");
    let avail = at + 16 * u64::from(size);
    v.set_queue_info(at, avail, used).expect("queue addresses");
    v.set_queue_size(size);
    v
}

/// The device's backend on `mem`, as a connected driver has set it up.
fn device_backend(
    engine: Option<&Arc<Mutex<FaultEngine>>>,
    target: &Arc<Target>,
    mem: &GuestMemoryAtomic<GuestMemoryMmap>,
    opts: DeviceOptions,
) -> VhostUserScsiBackend {
    let backend = match engine {
        None => VhostUserScsiBackend::new(target.clone(), 1),
        Some(engine) => {
            let ctx = FaultContext::new(engine.clone(), Epoch::start());
            VhostUserScsiBackend::with_faults(target.clone(), 1, ctx).expect("timerfds")
        }
    };
    backend.update_memory(mem.clone()).expect("memory");
    backend.set_event_idx(opts.event_idx);
    if opts.event_buffer {
        backend.acked_features(1 << VIRTIO_SCSI_F_HOTPLUG | 1 << VIRTIO_SCSI_F_CHANGE);
    }
    backend
}

impl Device {
    /// `chains` are posted up front (descriptor tables and avail rings written, avail
    /// indices left at 0); [`Device::kick`] then makes them available one at a time.
    pub fn new(
        payload: &[u8],
        engine: Option<Arc<Mutex<FaultEngine>>>,
        target: Arc<Target>,
        opts: DeviceOptions,
        chains: &[(QueueKind, Vec<RawDescriptor>)],
    ) -> Option<Device> {
        init_logging();
        let mem = guest_memory(payload);
        if opts.power_on {
            target.power_on();
        }
        let atomic = GuestMemoryAtomic::new(mem.clone());
        let backend = device_backend(engine.as_ref(), &target, &atomic, opts);

        let mut ctrl = Ring::new(CTRL_AT, CTRL_USED);
        let mut req = Ring::new(REQ_AT, REQ_USED);
        {
            let mocks = [
                MockSplitQueue::create(&mem, GuestAddress(CTRL_AT), QUEUE_SIZE),
                MockSplitQueue::create(&mem, GuestAddress(REQ_AT), QUEUE_SIZE),
            ];
            let mut next = [0u16; 2];
            for (kind, descs) in chains {
                let q = usize::from(*kind == QueueKind::Request);
                let ring = if q == 0 { &mut ctrl } else { &mut req };
                let head = next[q];
                if descs.is_empty() || usize::from(head) + descs.len() > usize::from(QUEUE_SIZE) {
                    return None;
                }
                // As MockSplitQueue::build_desc_chain links them, at this chain's slots.
                for (i, d) in descs.iter().enumerate() {
                    let d = SplitDescriptor::from(*d);
                    let last = i + 1 == descs.len();
                    let next_flag = VRING_DESC_F_NEXT as u16;
                    let flags = if last {
                        d.flags() & !next_flag
                    } else {
                        d.flags() | next_flag
                    };
                    let slot = head + i as u16;
                    let link = if last { 0 } else { slot + 1 };
                    let raw =
                        RawDescriptor::from(SplitDescriptor::new(d.addr().0, d.len(), flags, link));
                    mocks[q].desc_table().store(slot, raw).ok()?;
                }
                let k = ring.heads.len();
                mocks[q].avail().ring().ref_at(k).ok()?.store(head);
                ring.heads.push(head);
                next[q] += descs.len() as u16;
            }
            // The chains as the device will see them, through a queue of our own.
            for (q, ring) in [&mut ctrl, &mut req].into_iter().enumerate() {
                mocks[q].avail().idx().store(ring.heads.len() as u16);
                let mut queue: Queue = mocks[q].create_queue().ok()?;
                let raws: Vec<&Vec<RawDescriptor>> = chains
                    .iter()
                    .filter(|(k, _)| usize::from(*k == QueueKind::Request) == q)
                    .map(|(_, d)| d)
                    .collect();
                let iter = queue.iter(&mem).ok()?;
                for (chain, raw) in iter.zip(raws) {
                    ring.infos.push(ChainInfo::of(chain, raw));
                }
                if ring.infos.len() != ring.heads.len() {
                    return None;
                }
                mocks[q].avail().idx().store(0);
            }
        }
        if opts.event_buffer {
            let evq = MockSplitQueue::create(&mem, GuestAddress(EVT_AT), EVT_SIZE);
            let d = SplitDescriptor::new(EVT_BUF.0, EVT_BUF.1, 2, 0);
            evq.desc_table().store(0, RawDescriptor::from(d)).ok()?;
            evq.avail().ring().ref_at(0).ok()?.store(0);
            evq.avail().idx().store(1);
        }

        let vrings = [
            vring(&atomic, CTRL_AT, QUEUE_SIZE, CTRL_USED),
            vring(&atomic, EVT_AT, EVT_SIZE, EVT_USED),
            vring(&atomic, REQ_AT, QUEUE_SIZE, REQ_USED),
        ];
        for (i, v) in vrings.iter().enumerate() {
            let ready = i != 1 || opts.event_buffer;
            v.set_queue_event_idx(opts.event_idx);
            v.set_queue_ready(ready);
            v.set_enabled(ready);
        }
        let infos: Vec<ChainInfo> = ctrl.infos.iter().chain(&req.infos).cloned().collect();
        let mut all = infos.clone();
        if opts.event_buffer {
            all.push(ChainInfo {
                writable: vec![(EVT_BUF.0, u64::from(EVT_BUF.1))],
                ..ChainInfo::default()
            });
        }
        Some(Device {
            mem,
            target,
            backend,
            engine,
            vrings,
            ctrl,
            req,
            event_buffer: opts.event_buffer,
            wild: ChainInfo::rewrites_queues(&infos),
            disjoint: ChainInfo::disjoint(&all),
        })
    }

    /// Makes the next chain of `kind` available and lets the worker serve the kick.
    /// Returns false when no chain of `kind` is left.
    pub fn kick(&mut self, kind: QueueKind) -> bool {
        let (ring, local) = match kind {
            QueueKind::Control => (&mut self.ctrl, CONTROL_QUEUE),
            QueueKind::Request => (&mut self.req, FIRST_REQUEST_QUEUE),
        };
        if usize::from(ring.kicked) >= ring.heads.len() {
            return false;
        }
        ring.kicked += 1;
        let avail_idx = GuestAddress(ring.vq_at + 16 * u64::from(ring.size) + 2);
        self.mem
            .write_obj(ring.kicked, avail_idx)
            .expect("avail idx");
        self.backend
            .handle_event(local as u16, EventSet::IN, &self.vrings, 0)
            .expect("a queue kick is never an error for the worker");
        self.check();
        true
    }

    /// The worker's timer, as if it fired now; then LU changes are announced.
    pub fn tick(&mut self) {
        if self.engine.is_some() {
            let r = self.backend.on_timer(0);
            if !self.wild {
                r.expect("timer");
            }
        }
        let r = self.backend.announce_lu_changes();
        if !self.wild {
            r.expect("LU change events");
        }
        self.check();
    }

    /// A device reset: every held request is dropped, none completes.
    pub fn reset(&mut self) {
        let used_before = (self.used_idx(&self.ctrl), self.used_idx(&self.req));
        self.backend.reset_device();
        for q in [CONTROL_QUEUE, EVENT_QUEUE, FIRST_REQUEST_QUEUE] {
            assert_eq!(
                self.backend.inflight_len(q),
                0,
                "queue {q} holds requests after a reset"
            );
        }
        if !self.wild {
            assert_eq!(
                used_before,
                (self.used_idx(&self.ctrl), self.used_idx(&self.req)),
                "a reset completed requests"
            );
        }
    }

    fn used_idx(&self, ring: &Ring) -> u16 {
        self.mem
            .read_obj(GuestAddress(ring.used + 2))
            .expect("used idx")
    }

    /// Every chain posted is completed once or held; each used entry names a posted,
    /// not yet completed head, with a length and a response the guest can accept.
    fn check(&mut self) {
        if self.wild {
            return;
        }
        let disjoint = self.disjoint;
        for (queue, kind) in [
            (FIRST_REQUEST_QUEUE, QueueKind::Request),
            (CONTROL_QUEUE, QueueKind::Control),
        ] {
            let idx = {
                let ring = if kind == QueueKind::Request {
                    &self.req
                } else {
                    &self.ctrl
                };
                self.used_idx(ring)
            };
            let mem = self.mem.clone();
            let ring = if kind == QueueKind::Request {
                &mut self.req
            } else {
                &mut self.ctrl
            };
            let posted = ring.kicked;
            assert!(idx >= ring.seen_used, "used idx went back on queue {queue}");
            for n in ring.seen_used..idx {
                let at = ring.used + 4 + 8 * u64::from(n % ring.size);
                let id: u32 = mem.read_obj(GuestAddress(at)).expect("used id");
                let len: u32 = mem.read_obj(GuestAddress(at + 4)).expect("used len");
                let Some(k) = ring.heads[..usize::from(posted)]
                    .iter()
                    .position(|&h| u32::from(h) == id)
                else {
                    panic!("queue {queue}: used id {id} was never made available");
                };
                assert!(
                    ring.completed.insert(ring.heads[k]),
                    "queue {queue}: request {id} completed twice"
                );
                let info = &ring.infos[k];
                assert!(
                    u64::from(len) <= info.writable_bytes,
                    "queue {queue}: used length {len} > {} writable bytes",
                    info.writable_bytes
                );
                if !disjoint || len == 0 {
                    continue;
                }
                match kind {
                    QueueKind::Request => {
                        assert!(
                            len as usize >= CMD_RESP_LEN,
                            "used length {len} cuts the response"
                        );
                        let r = info
                            .read_writable(&mem, CMD_RESP_LEN)
                            .expect("response readable");
                        check_cmd_response(&r, info);
                    }
                    QueueKind::Control => {
                        let r = info
                            .read_writable(&mem, len as usize)
                            .expect("response readable");
                        check_control_response(len, &r);
                    }
                }
            }
            ring.seen_used = idx;
            let held = self.backend.inflight_len(queue);
            assert_eq!(
                usize::from(idx) + held,
                usize::from(posted),
                "queue {queue}: {posted} requests made available, {idx} completed, {held} held"
            );
        }
        if self.event_buffer {
            let idx: u16 = self.mem.read_obj(GuestAddress(EVT_USED + 2)).expect("idx");
            assert!(idx <= 1, "{idx} events in one buffer");
            if idx == 1 {
                let len: u32 = self.mem.read_obj(GuestAddress(EVT_USED + 8)).expect("len");
                assert!(len == 0 || len == EVT_BUF.1, "event of {len} bytes");
            }
        }
    }
}

// ---- a fixed workload ----

fn lun_bytes(target: u8, lun: u16) -> [u8; 8] {
    [1, target, 0x40 | (lun >> 8) as u8, lun as u8, 0, 0, 0, 0]
}

fn raw(addr: u64, len: u32, writable: bool) -> RawDescriptor {
    let flags = if writable { 2 } else { 0 };
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// One request of the workload.
enum Req<'a> {
    /// (target, LUN), id, CDB, data-in bytes, data-out bytes.
    Cmd((u8, u16), u64, &'a [u8], u32, u32),
    /// TMF subtype, (target, LUN), id of the task it names.
    Tmf(u32, (u8, u16), u64),
    An((u8, u16)),
}

/// Commands, TMFs and an AN request as a driver sends them (reads, writes, a held task
/// aborted, resets of a LU and of the nexus, a query), on both LUs and an absent one, in
/// one payload. Each request has its own 4 KiB slot: header at 0, response at 0x200, data
/// at 0x400.
pub fn workload() -> (Vec<(QueueKind, Vec<RawDescriptor>)>, Vec<u8>) {
    const READ10: [u8; 10] = [0x28, 0, 0, 0, 0, 4, 0, 0, 1, 0];
    const WRITE10: [u8; 10] = [0x2a, 0, 0, 0, 0, 5, 0, 0, 1, 0];
    const READ16: [u8; 16] = [0x88, 0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, 2, 0, 0];
    const INQUIRY: [u8; 6] = [0x12, 0, 0, 0, 96, 0];
    const TUR: [u8; 6] = [0; 6];
    let reqs = [
        Req::Cmd((0, 0), 1, &READ10, 512, 0),
        Req::Cmd((0, 0), 2, &WRITE10, 0, 512),
        Req::Tmf(0, (0, 0), 1),
        Req::Cmd((1, 3), 3, &INQUIRY, 96, 0),
        Req::Tmf(5, (0, 0), 0),
        Req::Cmd((1, 3), 4, &TUR, 0, 0),
        Req::An((0, 0)),
        Req::Cmd((0, 0), 5, &READ16, 1024, 0),
        Req::Tmf(7, (1, 3), 0),
        Req::Cmd((0, 9), 6, &READ10, 512, 0),
        Req::Tmf(4, (0, 0), 0),
        Req::Cmd((0, 0), 7, &TUR, 0, 0),
    ];
    let mut payload = vec![0u8; 0x1000 * reqs.len()];
    let mut chains = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        let off = 0x1000 * i;
        let at = DATA_BASE + off as u64;
        let slot = &mut payload[off..off + 0x1000];
        let chain = match *r {
            Req::Cmd((t, l), id, cdb, din, dout) => {
                slot[..8].copy_from_slice(&lun_bytes(t, l));
                slot[8..16].copy_from_slice(&id.to_le_bytes());
                slot[19..19 + cdb.len()].copy_from_slice(cdb);
                slot[0x400..0x400 + dout as usize].fill(0x5a);
                let mut d = vec![raw(at, CMD_REQ_LEN as u32, false)];
                if dout > 0 {
                    d.push(raw(at + 0x400, dout, false));
                }
                d.push(raw(at + 0x200, CMD_RESP_LEN as u32, true));
                if din > 0 {
                    d.push(raw(at + 0x400, din, true));
                }
                (QueueKind::Request, d)
            }
            Req::Tmf(subtype, (t, l), id) => {
                slot[4..8].copy_from_slice(&subtype.to_le_bytes());
                slot[8..16].copy_from_slice(&lun_bytes(t, l));
                slot[16..24].copy_from_slice(&id.to_le_bytes());
                let d = vec![raw(at, 24, false), raw(at + 0x200, 1, true)];
                (QueueKind::Control, d)
            }
            Req::An((t, l)) => {
                slot[..4].copy_from_slice(&1u32.to_le_bytes());
                slot[4..12].copy_from_slice(&lun_bytes(t, l));
                slot[12..16].copy_from_slice(&0x7eu32.to_le_bytes());
                let d = vec![raw(at, 16, false), raw(at + 0x200, 5, true)];
                (QueueKind::Control, d)
            }
        };
        chains.push(chain);
    }
    (chains, payload)
}

/// Runs the workload through a device with `engine` on `target`: every chain is kicked
/// in order, then the timer fires, LU changes are announced and the device is reset,
/// with the checks of [`Device`] after each step.
pub fn run_workload(engine: Arc<Mutex<FaultEngine>>, target: Arc<Target>) {
    let (chains, payload) = workload();
    let opts = DeviceOptions {
        power_on: false,
        event_idx: true,
        event_buffer: true,
    };
    let mut dev = Device::new(&payload, Some(engine), target, opts, &chains)
        .expect("the workload fits the queues");
    assert!(!dev.wild, "the workload keeps to its buffers");
    for (kind, _) in &chains {
        assert!(dev.kick(*kind));
    }
    dev.tick();
    dev.reset();
}
