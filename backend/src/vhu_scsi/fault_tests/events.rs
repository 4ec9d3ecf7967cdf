//! Events that cannot be posted are traced as `event-lost`, counted, and flagged on the
//! next event as VIRTIO_SCSI_T_EVENTS_MISSED.

use super::*;
use crate::faults::{ResetReason, VirtioEvent};

const RESCAN: VirtioEvent = VirtioEvent::TransportReset {
    target: 0,
    lun: 1,
    reason: ResetReason::Rescan,
};

fn lost(r: &Rig) -> Vec<(Value, Value)> {
    r.trace_events("event-lost")
        .into_iter()
        .map(|v| (v["event"].clone(), v["reason"].clone()))
        .collect()
}

#[test]
fn an_event_without_a_buffer_is_traced_lost_and_the_next_says_missed() {
    let r = rig(&[], 0);
    r.kick(EVENT_QUEUE);
    let now = r.backend.faults.epoch.now();
    r.backend.post_event(RESCAN, now).unwrap();
    assert!(r.used(EVENT_QUEUE).is_empty());
    assert_eq!(
        lost(&r),
        vec![("transport-reset".into(), "no-buffer".into())]
    );
    let rec = &r.trace_events("event-lost")[0];
    assert_eq!((&rec["target"], &rec["lun"]), (&0.into(), &1.into()));
    assert_eq!(rec["detail"], "rescan");
    assert_eq!((r.stats().events_lost, r.stats().events_posted), (1, 0));

    let (head, buf) = r.event_buffer();
    r.backend.post_event(RESCAN, now).unwrap();
    assert_eq!(r.used(EVENT_QUEUE), vec![(u32::from(head), 16)]);
    assert_eq!(
        u32::from(r.event_at(buf).event),
        VIRTIO_SCSI_T_TRANSPORT_RESET | VIRTIO_SCSI_T_EVENTS_MISSED
    );
    assert_eq!((r.stats().events_lost, r.stats().events_posted), (1, 1));
}

#[test]
fn a_buffer_too_small_for_the_event_goes_back_empty_and_the_event_is_lost() {
    let r = rig(&[], 0);
    r.kick(EVENT_QUEUE);
    let small = r.buf();
    let head = r.post(EVENT_QUEUE, &[(small, 8, true)]);
    let now = r.backend.faults.epoch.now();
    r.backend.post_event(RESCAN, now).unwrap();
    assert_eq!(r.used(EVENT_QUEUE), vec![(u32::from(head), 0)]);
    assert_eq!(
        lost(&r),
        vec![("transport-reset".into(), "bad-buffer".into())]
    );
    assert!(r.trace_events("event").is_empty(), "not posted");
    assert_eq!(r.stats().events_lost, 1);
    let (_, buf) = r.event_buffer();
    r.backend.post_event(RESCAN, now).unwrap();
    assert_ne!(
        u32::from(r.event_at(buf).event) & VIRTIO_SCSI_T_EVENTS_MISSED,
        0
    );
}

#[test]
fn an_event_before_the_driver_starts_the_event_queue_is_lost() {
    let r = rig(&[], 0);
    r.kick(EVENT_QUEUE);
    r.vrings[EVENT_QUEUE].set_queue_ready(false);
    let now = r.backend.faults.epoch.now();
    r.backend.post_event(RESCAN, now).unwrap();
    assert_eq!(
        lost(&r),
        vec![("transport-reset".into(), "queue-not-ready".into())]
    );
}

#[test]
fn a_fired_event_with_no_frontend_is_traced_lost() {
    // The device of a daemon whose frontend has not set up guest memory: what the control
    // socket's `fire-event` queued comes out at worker 0's next tick and finds no queue.
    let f = fixture();
    let trace = SharedBuf::default();
    let mut engine = FaultEngine::new(Plan::default());
    engine.set_trace(Some(Trace::to_writer(Box::new(trace.clone()))));
    engine
        .queue_event(VirtioEvent::ParamChange {
            target: 0,
            lun: 0,
            asc: 0x2a,
            ascq: 0x09,
        })
        .unwrap();
    let engine = Arc::new(Mutex::new(engine));
    let ctx = FaultContext::new(engine.clone(), crate::faults::Epoch::start());
    let backend = VhostUserScsiBackend::with_faults(f.target.clone(), 1, ctx).unwrap();
    backend.on_timer(0).unwrap();
    let mut e = lock(&engine);
    e.flush_trace().unwrap();
    assert_eq!(e.stats().events_lost, 1);
    assert_eq!(e.stats().fired.event, 1);
    drop(e);
    let text = String::from_utf8(trace.0.lock().unwrap().clone()).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let evs: Vec<_> = records.iter().map(|v| v["ev"].clone()).collect();
    assert_eq!(evs, ["fault", "event-lost"]);
    assert_eq!(records[0]["fault"], 0, "the control socket's");
    assert_eq!(records[1]["event"], "param-change");
    assert_eq!(records[1]["detail"], "0x2a/0x09");
    assert_eq!(records[1]["reason"], "no-frontend");
}

#[test]
fn event_is_posted_in_a_driver_buffer_and_missed_ones_are_flagged() {
    let r = rig(&["event:event=param-change,at_ms=1"], 0);
    r.kick(EVENT_QUEUE);
    // No buffer yet: the event is missed.
    assert!(r.timer_fires_within(Duration::from_secs(5)));
    r.timer();
    assert!(r.used(EVENT_QUEUE).is_empty());
    assert_eq!(r.stats().events_posted, 0);

    let buf = r.buf();
    let head = r.post(EVENT_QUEUE, &[(buf, 16, true)]);
    r.kick(EVENT_QUEUE);
    assert!(r.used(EVENT_QUEUE).is_empty(), "buffers wait for an event");
    let now = r.backend.faults.epoch.now();
    r.backend
        .post_event(
            crate::faults::VirtioEvent::TransportReset {
                target: 0,
                lun: 1,
                reason: crate::faults::ResetReason::Rescan,
            },
            now,
        )
        .unwrap();
    assert_eq!(r.used(EVENT_QUEUE), vec![(u32::from(head), 16)]);
    let ev: VirtioScsiEvent = r.f.mem.read_obj(GuestAddress(buf)).unwrap();
    assert_eq!(
        u32::from(ev.event),
        VIRTIO_SCSI_T_TRANSPORT_RESET | VIRTIO_SCSI_T_EVENTS_MISSED
    );
    assert_eq!(u32::from(ev.reason), VIRTIO_SCSI_EVT_RESET_RESCAN);
    assert_eq!(ev.lun, [1, 0, 0, 1, 0, 0, 0, 0]);
    assert_eq!(r.signals(EVENT_QUEUE), 1);
    let posted = r.trace_events("event");
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0]["event"], "transport-reset");
}

#[test]
fn param_change_event_carries_asc_and_ascq() {
    let ev = crate::vhu_scsi::events::event_wire(
        &crate::faults::VirtioEvent::ParamChange {
            target: 0,
            lun: 0,
            asc: 0x2a,
            ascq: 0x09,
        },
        false,
    );
    assert_eq!(u32::from(ev.event), VIRTIO_SCSI_T_PARAM_CHANGE);
    assert_eq!(u32::from(ev.reason), 0x092a);
    assert_eq!(ev.as_slice().len(), 16);
}
