//! Queue level: completions on the used ring and the interrupt decision (EVENT_IDX,
//! batching), the event queue, queue-to-worker mapping and the features offered.

use super::*;

struct QueueRig {
    backend: VhostUserScsiBackend,
    vring: VringRwLock,
    call: EventFd,
}

const Q_SIZE: u16 = 16;
/// MockSplitQueue places its used ring over the avail ring's tail and `used_event`
/// (it adds the ring length in entries, not bytes), so the rig uses its own used ring.
const USED_RING: u64 = 0x8000;

fn used_idx(f: &Fixture) -> u16 {
    f.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap()
}

/// (id, len) of used element `n`.
fn used_elem(f: &Fixture, n: u64) -> (u32, u32) {
    let at = USED_RING + 4 + 8 * n;
    (
        f.mem.read_obj(GuestAddress(at)).unwrap(),
        f.mem.read_obj(GuestAddress(at + 4)).unwrap(),
    )
}

fn rig(f: &Fixture, vq: &MockSplitQueue<GuestMemoryMmap>, event_idx: bool) -> QueueRig {
    let atomic = GuestMemoryAtomic::new(f.mem.clone());
    let backend = VhostUserScsiBackend::new(f.target.clone(), 1);
    backend.update_memory(atomic.clone()).unwrap();
    backend.set_event_idx(event_idx);
    let vring = VringRwLock::new(atomic, Q_SIZE).unwrap();
    vring
        .set_queue_info(vq.desc_table_addr().0, vq.avail_addr().0, USED_RING)
        .unwrap();
    vring.set_queue_size(Q_SIZE);
    vring.set_queue_event_idx(event_idx);
    vring.set_queue_ready(true);
    vring.set_enabled(true);
    let call = EventFd::new(EFD_NONBLOCK).unwrap();
    let fd = call.try_clone().unwrap().into_raw_fd();
    // SAFETY: `fd` is a fresh duplicate that nothing else owns.
    vring.set_call(Some(unsafe { File::from_raw_fd(fd) }));
    QueueRig {
        backend,
        vring,
        call,
    }
}

impl QueueRig {
    /// One kick: the request queue's handler runs once.
    fn serve(&self) {
        self.backend
            .process_queue(FIRST_REQUEST_QUEUE, &self.vring)
            .unwrap();
    }
}

/// Writes the driver's `used_event` (EVENT_IDX), which follows the avail ring.
fn set_used_event(f: &Fixture, vq: &MockSplitQueue<GuestMemoryMmap>, index: u16) {
    let at = vq.avail_addr().0 + 4 + 2 * u64::from(Q_SIZE);
    f.mem.write_obj(index, GuestAddress(at)).unwrap();
}

/// Posts a TEST UNIT READY chain on the mock queue.
fn post_tur(f: &Fixture, vq: &MockSplitQueue<GuestMemoryMmap>) {
    f.mem
        .write_obj(
            cmd_header(lun(0), &[opcode::TEST_UNIT_READY]),
            GuestAddress(HDR_ADDR),
        )
        .unwrap();
    vq.build_desc_chain(&[desc(HDR_ADDR, 51, false), desc(RESP_ADDR, RESP_LEN, true)])
        .unwrap();
}

#[test]
fn request_queue_completes_and_signals() {
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, false);
    post_tur(&f, &vq);
    r.serve();
    assert_eq!(used_idx(&f), 1);
    assert_eq!(used_elem(&f, 0), (0, RESP_LEN));
    assert_eq!(r.call.read().unwrap(), 1, "one interrupt");
    assert_eq!(f.response_byte(), VIRTIO_SCSI_S_OK);
}

#[test]
fn event_idx_suppresses_unwanted_interrupts() {
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, true);
    // used_event (after the avail ring) far ahead: the driver wants no interrupt yet.
    set_used_event(&f, &vq, 10);
    post_tur(&f, &vq);
    r.serve();
    assert_eq!(used_idx(&f), 1, "completed");
    assert!(
        r.call.read().is_err(),
        "no interrupt: the call eventfd is empty"
    );

    // used_event = 1: the driver asks for an interrupt after the second completion.
    set_used_event(&f, &vq, 1);
    post_tur(&f, &vq);
    r.serve();
    assert_eq!(used_idx(&f), 2);
    assert_eq!(r.call.read().unwrap(), 1);
}

#[test]
fn avail_index_more_than_a_ring_ahead_does_not_hang_the_worker() {
    // Found by the request fuzz target: with EVENT_IDX, every pop failed while
    // enable_notification kept reporting chains, and the worker spun forever.
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, true);
    post_tur(&f, &vq);
    let avail_idx = GuestAddress(vq.avail_addr().0 + 2);
    f.mem.write_obj(Q_SIZE + 5, avail_idx).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let result = r.backend.process_queue(FIRST_REQUEST_QUEUE, &r.vring);
        tx.send((result.is_ok(), take_warnings().len(), r)).unwrap();
    });
    let (ok, warnings, r) = rx
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("the queue handler returns");
    assert!(ok);
    assert_eq!(warnings, 1, "one warning for the broken ring");
    assert_eq!(used_idx(&f), 0);
    // The driver repairs its index: the next kick serves the chain.
    f.mem.write_obj(1u16, avail_idx).unwrap();
    r.serve();
    assert_eq!(used_idx(&f), 1);
    assert_eq!(f.response_byte(), VIRTIO_SCSI_S_OK);
}

#[test]
fn one_pass_signals_once_for_all_its_completions() {
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, false);
    for _ in 0..3 {
        post_tur(&f, &vq);
    }
    r.serve();
    assert_eq!(used_idx(&f), 3);
    assert_eq!(r.call.read().unwrap(), 1, "one eventfd write for the pass");

    // EVENT_IDX: the driver wants the interrupt of the second of three completions; the
    // decision at the end of the pass sees it in its window.
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, true);
    set_used_event(&f, &vq, 1);
    for _ in 0..3 {
        post_tur(&f, &vq);
    }
    r.serve();
    assert_eq!(used_idx(&f), 3);
    assert_eq!(r.call.read().unwrap(), 1);
}

#[test]
fn a_long_batch_is_signalled_every_max_unsignalled_completions() {
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, false);
    let ring = RingEpoch::new(FIRST_REQUEST_QUEUE);
    let mut batch = SignalBatch::new(&ring, false);
    let mut sent = 0;
    let n = 2 * MAX_UNSIGNALLED + 5;
    for i in 0..n {
        if let Some(outcome) = batch
            .complete(&r.vring, ring.popped_now(i % Q_SIZE), 0)
            .unwrap()
        {
            assert_eq!(outcome, SignalOutcome::Sent);
            sent += 1;
        }
    }
    assert_eq!(sent, 2, "two full batches decided on the way");
    assert_eq!(batch.flush(&r.vring).unwrap(), Some(SignalOutcome::Sent));
    assert_eq!(batch.flush(&r.vring).unwrap(), None, "nothing left");
    assert_eq!(r.call.read().unwrap(), 3);
}

#[test]
fn with_event_idx_completions_are_decided_at_once_until_one_is_signalled() {
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, true);
    let ring = RingEpoch::new(FIRST_REQUEST_QUEUE);
    let mut batch = SignalBatch::new(&ring, true);
    // The driver asks for an interrupt at the first used entry: the first completion is
    // signalled at once, the rest of the pass waits for its end.
    assert_eq!(
        batch.complete(&r.vring, ring.popped_now(0), 0).unwrap(),
        Some(SignalOutcome::Sent)
    );
    for i in 1..5 {
        assert_eq!(
            batch.complete(&r.vring, ring.popped_now(i), 0).unwrap(),
            None,
            "{i}"
        );
    }
    assert!(
        batch.flush(&r.vring).unwrap().is_some(),
        "decided at the end"
    );
    assert_eq!(r.call.read().unwrap(), 1, "the driver had not caught up");
    // A new pass decides its first completion at once again.
    assert!(batch
        .complete(&r.vring, ring.popped_now(5), 0)
        .unwrap()
        .is_some());
}

#[test]
fn event_queue_keeps_its_buffers() {
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, false);
    vq.build_desc_chain(&[desc(RESP_ADDR, 16, true)]).unwrap();
    r.backend.process_queue(EVENT_QUEUE, &r.vring).unwrap();
    assert_eq!(used_idx(&f), 0);
    assert_eq!(r.vring.queue_next_avail(), 0, "buffer not consumed");
    assert!(r.call.read().is_err());
}

#[test]
fn control_queue_answers_through_the_queue() {
    let f = fixture();
    let vq = MockSplitQueue::new(&f.mem, Q_SIZE);
    let r = rig(&f, &vq, false);
    f.mem
        .write_obj(
            tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0)),
            GuestAddress(HDR_ADDR),
        )
        .unwrap();
    vq.build_desc_chain(&[desc(HDR_ADDR, 24, false), desc(RESP_ADDR, 1, true)])
        .unwrap();
    r.backend.process_queue(CONTROL_QUEUE, &r.vring).unwrap();
    assert_eq!(used_idx(&f), 1);
    assert_eq!(used_elem(&f, 0), (0, 1));
    assert_eq!(f.response_byte(), VIRTIO_SCSI_S_FUNCTION_COMPLETE);
    assert_eq!(r.call.read().unwrap(), 1);
}

#[test]
fn queues_map_to_workers() {
    let f = fixture();
    let b = VhostUserScsiBackend::new(f.target.clone(), 3);
    assert_eq!(b.num_queues(), 5);
    assert_eq!(b.queues_per_thread(), vec![0b111, 0b1000, 0b10000]);
    assert_eq!(queue_of(0b111, 2), Some(2));
    assert_eq!(queue_of(0b1000, 0), Some(3));
    assert_eq!(queue_of(0b1000, 1), None);
}

#[test]
fn features_include_what_qemu_offers() {
    let f = fixture();
    let b = VhostUserScsiBackend::new(f.target.clone(), 1);
    let feat = b.features();
    for bit in [
        u64::from(VIRTIO_F_VERSION_1),
        u64::from(VIRTIO_RING_F_EVENT_IDX),
        u64::from(VIRTIO_RING_F_INDIRECT_DESC),
        VIRTIO_SCSI_F_HOTPLUG,
        VIRTIO_SCSI_F_CHANGE,
    ] {
        assert_ne!(feat & (1 << bit), 0, "feature bit {bit}");
    }
    assert_eq!(feat & (1 << VIRTIO_SCSI_F_INOUT), 0);
}
