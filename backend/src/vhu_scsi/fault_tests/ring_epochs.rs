//! A device reset or a stopped ring mid-I/O: nothing popped from the rings before reaches
//! the rings the driver sets up after, whether a worker's pass, a timer or a TMF completes
//! it; a stop lets the pass in progress finish onto its ring first.

use std::sync::mpsc;

use vm_memory::GuestAddressSpace;

use super::*;
use crate::vhu_scsi::passes::ChainServer;

const Q: usize = FIRST_REQUEST_QUEUE;

/// VHOST_USER_RESET_DEVICE as vhost-user-backend's handler does it: every ring disabled,
/// then the backend's reset.
fn reset_as_the_handler_does(backend: &VhostUserScsiBackend, vrings: &[VringRwLock]) {
    for v in vrings {
        v.set_enabled(false);
    }
    backend.reset_device();
}

/// The driver sets ring `q` up again after a reset: zeroed avail and used rings, then the
/// vhost-user messages (SET_VRING_BASE 0, SET_VRING_ADDR, kick and call, enable).
fn set_up_again(r: &Rig, q: usize) {
    let ring = usize::from(RING);
    r.f.mem
        .write_slice(&vec![0u8; 6 + 2 * ring], GuestAddress(avail_ring(q)))
        .unwrap();
    r.f.mem
        .write_slice(&vec![0u8; 6 + 8 * ring], GuestAddress(used_ring(q)))
        .unwrap();
    r.next_slot[q].set(0);
    let v = &r.vrings[q];
    v.set_queue_next_avail(0);
    v.set_queue_info(desc_table(q), avail_ring(q), used_ring(q))
        .unwrap();
    v.set_queue_next_used(0);
    v.set_queue_ready(true);
    v.set_enabled(true);
}

fn pop(r: &Rig, q: usize) -> (Chain, Popped) {
    let mem = r.backend.memory().unwrap().memory();
    match r.backend.rings[q].pop(&r.vrings[q], mem) {
        Pop::Chain(chain, popped) => (chain, popped),
        Pop::Empty | Pop::Stopped => panic!("nothing popped"),
    }
}

#[test]
fn a_chain_popped_before_a_device_reset_never_reaches_the_new_ring() {
    let r = rig(&[], 0);
    let old = r.tur(1);
    let (_chain, popped) = pop(&r, Q);
    assert_eq!(popped.head(), old.head);
    reset_as_the_handler_does(&r.backend, &r.vrings);
    set_up_again(&r, Q);
    // The new ring's first request has the old one's head.
    let new = r.tur(2);
    assert_eq!(new.head, old.head);

    // Completed alone, or in a pass's batch: neither lands.
    let ring = &r.backend.rings[Q];
    let alone = complete_and_notify(&r.vrings[Q], ring, popped, RESP_LEN, false).unwrap();
    assert_eq!(alone, None);
    let mut batch = SignalBatch::new(ring, true);
    assert_eq!(
        batch.complete(&r.vrings[Q], popped, RESP_LEN).unwrap(),
        None
    );
    assert_eq!(batch.flush(&r.vrings[Q]).unwrap(), None);
    assert!(r.used(Q).is_empty());
    assert_eq!(r.signals(Q), 0);
    assert_eq!(r.backend.stale_completions(Q), 2);

    r.kick(Q);
    assert_eq!(r.used(Q), vec![(u32::from(new.head), RESP_LEN)]);
    assert_eq!(r.resp(new).response, VIRTIO_SCSI_S_OK);
    assert_eq!(r.backend.stale_completions(Q), 2);
}

#[test]
fn a_disabled_or_stopped_ring_pops_nothing() {
    let r = rig(&[], 0);
    r.tur(1);
    let mem = || r.backend.memory().unwrap().memory();
    r.vrings[Q].set_enabled(false);
    assert!(matches!(
        r.backend.rings[Q].pop(&r.vrings[Q], mem()),
        Pop::Stopped
    ));
    r.vrings[Q].set_enabled(true);
    r.vrings[Q].set_queue_ready(false);
    assert!(matches!(
        r.backend.rings[Q].pop(&r.vrings[Q], mem()),
        Pop::Stopped
    ));
    // A kick of a stopped ring serves nothing.
    r.kick(Q);
    assert_eq!(r.vrings[Q].queue_next_avail(), 0);
    r.vrings[Q].set_queue_ready(true);
    r.kick(Q);
    assert_eq!(r.used(Q).len(), 1);
}

/// Serves each chain when told to, completing it as the plain path does: a pass that is
/// in the middle of a chain when the ring is reset or stopped.
struct Gated<'a> {
    vring: &'a VringRwLock,
    batch: SignalBatch<'a>,
    serving: mpsc::Sender<u16>,
    go: mpsc::Receiver<()>,
}

impl ChainServer for Gated<'_> {
    fn serve(
        &mut self,
        _mem: &GuestMemoryMmap,
        _chain: Chain,
        popped: Popped,
    ) -> Result<(), VhuScsiError> {
        self.serving.send(popped.head()).unwrap();
        self.go.recv().unwrap();
        self.batch.complete(self.vring, popped, 0).map(drop)
    }

    fn end_pass(&mut self) -> Result<(), VhuScsiError> {
        self.batch.flush(self.vring).map(drop)
    }
}

/// Runs a pass over queue `Q` on another thread, stopped in the middle of its first chain
/// while `meanwhile` runs on a third one; `meanwhile` is given 100 ms to return before the
/// chain is let go. Returns whether it returned in that time, and its result.
fn during_a_pass<T: Send>(
    r: &Rig,
    meanwhile: impl FnOnce(&VhostUserScsiBackend, &[VringRwLock]) -> T + Send,
) -> (bool, T) {
    let (backend, vrings) = (&r.backend, &r.vrings[..]);
    let (serving, popped) = mpsc::channel();
    let (go, gate) = mpsc::channel();
    std::thread::scope(|s| {
        let worker = s.spawn(move || {
            let mut server = Gated {
                vring: &vrings[Q],
                batch: SignalBatch::new(&backend.rings[Q], true),
                serving,
                go: gate,
            };
            backend.serve_passes(Q, &vrings[Q], true, &mut server)
        });
        popped.recv().unwrap();
        let other = s.spawn(move || meanwhile(backend, vrings));
        let deadline = Instant::now() + Duration::from_millis(100);
        while !other.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let returned = other.is_finished();
        go.send(()).unwrap();
        worker.join().unwrap().unwrap();
        (returned, other.join().unwrap())
    })
}

#[test]
fn a_device_reset_waits_for_the_pass_in_progress_and_drops_its_completion() {
    let r = rig(&[], 0);
    r.tur(1);
    let (returned, ()) = during_a_pass(&r, reset_as_the_handler_does);
    assert!(!returned, "the reset waited for the pass in progress");
    assert!(r.used(Q).is_empty(), "the old request is not completed");
    assert_eq!(r.signals(Q), 0);
    assert_eq!(r.backend.stale_completions(Q), 1);

    for q in 0..r.vrings.len() {
        set_up_again(&r, q);
    }
    let new = r.tur(2);
    r.kick(Q);
    assert_eq!(r.used(Q), vec![(u32::from(new.head), RESP_LEN)]);
}

#[test]
fn a_stopped_ring_gets_the_pass_in_progress_completed_before_the_stop_returns() {
    let r = rig(&[], 0);
    let old = r.tur(1);
    // GET_VRING_BASE as the handler does it: the ring is made not ready, the backend
    // stops it, and the next avail index goes back to the frontend.
    let (returned, next_avail) = during_a_pass(&r, |backend, vrings| {
        vrings[Q].set_queue_ready(false);
        backend.stop_vring(Q as u32).unwrap();
        vrings[Q].queue_next_avail()
    });
    assert!(!returned, "the stop waited for the pass in progress");
    assert_eq!(r.used(Q), vec![(u32::from(old.head), 0)], "completed");
    assert_eq!(next_avail, 1);
    assert_eq!(r.backend.stale_completions(Q), 0);

    // Resumed where it stopped (a VM's stop and cont): the next request is served and
    // the old one is not completed again.
    r.vrings[Q].set_queue_ready(true);
    let new = r.tur(2);
    r.kick(Q);
    assert_eq!(
        r.used(Q),
        vec![(u32::from(old.head), 0), (u32::from(new.head), RESP_LEN)]
    );
}

#[test]
fn a_held_request_a_timer_completes_after_a_device_reset_never_reaches_the_new_ring() {
    for (fault, q) in [
        ("delay:delay_ms=1", Q),
        ("slow-tmf:tmf=lu-reset,duration_ms=1", CONTROL_QUEUE),
    ] {
        let r = rig(&[fault], 0);
        if q == Q {
            r.tur(1);
        } else {
            r.tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(0), 1);
        }
        r.kick(q);
        assert_eq!(r.backend.inflight_len(q), 1, "{fault}");
        // The timer has taken it out of the in-flight table when the reset comes.
        let due = lock(&r.backend.inflight[q])
            .take_due(Duration::MAX)
            .unwrap();
        reset_as_the_handler_does(&r.backend, &r.vrings);
        set_up_again(&r, q);
        r.backend.complete_due(q, due).unwrap();
        assert!(r.used(q).is_empty(), "{fault}");
        assert_eq!(r.signals(q), 0, "{fault}");
        assert_eq!(r.backend.stale_completions(q), 1, "{fault}");
        assert!(r.trace_events("complete").is_empty(), "{fault}");
        assert!(r.trace_events("tmf-end").is_empty(), "{fault}");
    }
}

#[test]
fn a_held_request_a_tmf_ends_after_a_device_reset_never_reaches_the_new_ring() {
    let r = rig(&["lose"], 0);
    r.tur(1);
    r.kick(Q);
    assert_eq!(r.backend.inflight_len(Q), 1);
    // The TMF has taken it out of the in-flight table when the reset comes.
    let held = lock(&r.backend.inflight[Q]).take_matching(0, None).unwrap();
    reset_as_the_handler_does(&r.backend, &r.vrings);
    set_up_again(&r, Q);
    r.backend.cancel(Q, held, VIRTIO_SCSI_S_RESET).unwrap();
    assert!(r.used(Q).is_empty());
    assert_eq!(r.backend.stale_completions(Q), 1);
    assert!(r.trace_events("complete").is_empty());
}
