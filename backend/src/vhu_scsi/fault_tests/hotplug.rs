//! LU hot-plug and capacity events: announced on the event queue as the driver's features
//! allow, with the unit attention the LU raises.

use super::*;

/// The driver acknowledged hot-plug and capacity-change events.
const HOTPLUG_AND_CHANGE: u64 = 1 << VIRTIO_SCSI_F_HOTPLUG | 1 << VIRTIO_SCSI_F_CHANGE;

/// A 64-block file-backed LU spec at `t:l` (the file lives as long as the returned handle).
fn extra_lu(t: u8, l: u16) -> (tempfile::NamedTempFile, crate::scsi::Lun) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(&[7u8; 64 * 512]).unwrap();
    f.flush().unwrap();
    let mut spec = crate::scsi::LunSpec::file(f.path(), false);
    spec.address = Some(LunAddress { target: t, lun: l });
    let lu = crate::scsi::Lun::open_spec(&spec).unwrap();
    (f, lu)
}

#[test]
fn hot_added_lu_is_announced_as_transport_reset_rescan_and_answers_inquiry() {
    let r = rig(&[], 0);
    r.backend.acked_features(HOTPLUG_AND_CHANGE);
    let inquiry = [opcode::INQUIRY, 0, 0, 0, 96, 0];
    let (_, before) = r.run(lun(2), &inquiry, 1, 96);
    assert_eq!(before.response, VIRTIO_SCSI_S_BAD_TARGET);

    let (head, buf) = r.event_buffer();
    r.kick(EVENT_QUEUE);
    assert!(r.used(EVENT_QUEUE).is_empty(), "no change, no event");
    let (_file, lu) = extra_lu(0, 2);
    r.f.target.add_lu(lu).unwrap();
    // The new buffer's kick finds the change.
    r.kick(EVENT_QUEUE);
    assert_eq!(r.used(EVENT_QUEUE), vec![(u32::from(head), 16)]);
    let ev = r.event_at(buf);
    assert_eq!(u32::from(ev.event), VIRTIO_SCSI_T_TRANSPORT_RESET);
    assert_eq!(u32::from(ev.reason), VIRTIO_SCSI_EVT_RESET_RESCAN);
    // As REPORT LUNS names it (QEMU's encoding): Linux reads lun[2] << 8 | lun[3] = 2.
    assert_eq!(ev.lun, [1, 0, 0, 2, 0, 0, 0, 0]);
    assert_eq!(r.signals(EVENT_QUEUE), 1);

    let (p, resp) = r.run(lun(2), &inquiry, 2, 96);
    assert_eq!((resp.response, resp.status), (VIRTIO_SCSI_S_OK, 0));
    let pdt: u8 = r.f.mem.read_obj(GuestAddress(p.data_in)).unwrap();
    assert_eq!(pdt, 0x00, "peripheral qualifier 0, direct-access device");
    // Hot-added: the first other command reports POWER ON like a fresh LU.
    let (_, tur) = r.run(lun(2), &[opcode::TEST_UNIT_READY], 3, 0);
    assert_eq!((tur.sense[2] & 0xf, tur.sense[12]), (6, 0x29));
    let posted = r.trace_events("event");
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0]["event"], "transport-reset");
}

#[test]
fn hot_removed_lu_is_announced_as_removed_and_then_is_bad_target() {
    let r = rig(&[], 0);
    r.backend.acked_features(HOTPLUG_AND_CHANGE);
    let (_, ok) = r.run(lun(1), &[opcode::TEST_UNIT_READY], 1, 0);
    assert_eq!((ok.response, ok.status), (VIRTIO_SCSI_S_OK, 0));
    // The worker learns its vrings on its first event; the timer path posts the event.
    let (head, buf) = r.event_buffer();
    r.f.target
        .remove_lu(LunAddress { target: 0, lun: 1 })
        .unwrap();
    r.timer();
    assert_eq!(r.used(EVENT_QUEUE), vec![(u32::from(head), 16)]);
    let ev = r.event_at(buf);
    assert_eq!(u32::from(ev.event), VIRTIO_SCSI_T_TRANSPORT_RESET);
    assert_eq!(u32::from(ev.reason), VIRTIO_SCSI_EVT_RESET_REMOVED);
    assert_eq!(ev.lun, [1, 0, 0, 1, 0, 0, 0, 0]);

    let (_, gone) = r.run(lun(1), &[opcode::TEST_UNIT_READY], 2, 0);
    assert_eq!(gone.response, VIRTIO_SCSI_S_BAD_TARGET);
    let t = r.tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, lun(1), 3);
    r.kick(CONTROL_QUEUE);
    assert_eq!(r.tmf_resp(t), VIRTIO_SCSI_S_BAD_TARGET);
    // LUN 0 still works.
    let (_, lu0) = r.run(lun(0), &[opcode::TEST_UNIT_READY], 4, 0);
    assert_eq!((lu0.response, lu0.status), (VIRTIO_SCSI_S_OK, 0));
}

#[test]
fn resize_is_announced_as_param_change_2a_09_with_the_unit_attention() {
    let r = rig(&[], 0);
    r.backend.acked_features(HOTPLUG_AND_CHANGE);
    let (head, buf) = r.event_buffer();
    r.kick(EVENT_QUEUE);
    r.f.target
        .set_capacity(LunAddress { target: 0, lun: 0 }, 128)
        .unwrap();
    r.timer();
    assert_eq!(r.used(EVENT_QUEUE), vec![(u32::from(head), 16)]);
    let ev = r.event_at(buf);
    assert_eq!(u32::from(ev.event), VIRTIO_SCSI_T_PARAM_CHANGE);
    // Linux: asc = reason & 255, ascq = (reason >> 8) & 255.
    let reason = u32::from(ev.reason);
    assert_eq!((reason & 0xff, reason >> 8 & 0xff), (0x2a, 0x09));
    assert_eq!(ev.lun, [1, 0, 0, 0, 0, 0, 0, 0]);

    let (_, ua) = r.run(lun(0), &[opcode::TEST_UNIT_READY], 1, 0);
    assert_eq!(ua.status, 0x02);
    assert_eq!(
        (ua.sense[2] & 0xf, ua.sense[12], ua.sense[13]),
        (6, 0x2a, 0x09)
    );
    let cap = [opcode::READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let (p, resp) = r.run(lun(0), &cap, 2, 8);
    assert_eq!((resp.response, resp.status), (VIRTIO_SCSI_S_OK, 0));
    let last: [u8; 4] = r.f.mem.read_obj(GuestAddress(p.data_in)).unwrap();
    assert_eq!(u32::from_be_bytes(last), 127);
}

#[test]
fn rescan_finding_a_grown_file_is_announced_as_param_change() {
    let r = rig(&[], 0);
    r.backend.acked_features(HOTPLUG_AND_CHANGE);
    let (_, buf) = r.event_buffer();
    r.kick(EVENT_QUEUE);
    let (changed, failed) = r.f.target.rescan();
    assert!(changed.is_empty() && failed.is_empty());
    r.f.files[1].as_file().set_len(96 * 512).unwrap();
    let (changed, failed) = r.f.target.rescan();
    assert_eq!(changed, vec![LunAddress { target: 0, lun: 1 }]);
    assert!(failed.is_empty());
    r.timer();
    let ev = r.event_at(buf);
    assert_eq!(u32::from(ev.event), VIRTIO_SCSI_T_PARAM_CHANGE);
    assert_eq!(ev.lun, [1, 0, 0, 1, 0, 0, 0, 0]);
    assert_eq!(u32::from(ev.reason), 0x092a);
}

#[test]
fn lu_changes_without_the_features_post_no_event_but_keep_the_unit_attention() {
    let r = rig(&[], 0);
    // Only CHANGE: hot-plug events stay with the device, capacity events go out.
    r.backend.acked_features(1 << VIRTIO_SCSI_F_CHANGE);
    let (head, buf) = r.event_buffer();
    r.kick(EVENT_QUEUE);
    let (_file, lu) = extra_lu(0, 3);
    r.f.target.add_lu(lu).unwrap();
    r.timer();
    assert!(r.used(EVENT_QUEUE).is_empty(), "HOTPLUG not acked");
    r.f.target
        .set_capacity(LunAddress { target: 0, lun: 3 }, 32)
        .unwrap();
    r.timer();
    assert_eq!(r.used(EVENT_QUEUE), vec![(u32::from(head), 16)]);
    assert_eq!(u32::from(r.event_at(buf).event), VIRTIO_SCSI_T_PARAM_CHANGE);

    r.backend.acked_features(0);
    r.event_buffer();
    r.f.target
        .set_capacity(LunAddress { target: 0, lun: 0 }, 16)
        .unwrap();
    r.kick(EVENT_QUEUE);
    assert_eq!(r.used(EVENT_QUEUE).len(), 1, "CHANGE not acked");
    let (_, ua) = r.run(lun(0), &[opcode::TEST_UNIT_READY], 1, 0);
    assert_eq!((ua.sense[12], ua.sense[13]), (0x2a, 0x09));
}

#[test]
fn lu_change_without_an_event_buffer_sets_events_missed() {
    let r = rig(&[], 0);
    r.backend.acked_features(HOTPLUG_AND_CHANGE);
    r.kick(EVENT_QUEUE);
    r.f.target
        .remove_lu(LunAddress { target: 0, lun: 1 })
        .unwrap();
    r.timer();
    assert!(r.used(EVENT_QUEUE).is_empty());
    let (_, buf) = r.event_buffer();
    let (_file, lu) = extra_lu(0, 1);
    r.f.target.add_lu(lu).unwrap();
    r.kick(EVENT_QUEUE);
    let ev = r.event_at(buf);
    assert_eq!(
        u32::from(ev.event),
        VIRTIO_SCSI_T_TRANSPORT_RESET | VIRTIO_SCSI_T_EVENTS_MISSED
    );
    assert_eq!(u32::from(ev.reason), VIRTIO_SCSI_EVT_RESET_RESCAN);
}

#[test]
fn lu_change_events_need_no_fault_engine() {
    let f = fixture();
    let backend = VhostUserScsiBackend::new(f.target.clone(), 1);
    let atomic = GuestMemoryAtomic::new(f.mem.clone());
    backend.update_memory(atomic.clone()).unwrap();
    backend.acked_features(HOTPLUG_AND_CHANGE);
    let vrings: Vec<VringRwLock> = (0..3)
        .map(|q| {
            let v = VringRwLock::new(atomic.clone(), RING).unwrap();
            v.set_queue_info(desc_table(q), avail_ring(q), used_ring(q))
                .unwrap();
            v.set_queue_size(RING);
            v.set_queue_ready(true);
            v.set_enabled(true);
            v
        })
        .collect();
    // One event buffer at slot 0 of the event queue.
    let buf = BUF_BASE;
    let at = desc_table(EVENT_QUEUE);
    f.mem.write_obj(buf, GuestAddress(at)).unwrap();
    f.mem.write_obj(16u32, GuestAddress(at + 8)).unwrap();
    f.mem
        .write_obj(VRING_DESC_F_WRITE as u16, GuestAddress(at + 12))
        .unwrap();
    f.mem
        .write_obj(0u16, GuestAddress(avail_ring(EVENT_QUEUE) + 4))
        .unwrap();
    f.mem
        .write_obj(1u16, GuestAddress(avail_ring(EVENT_QUEUE) + 2))
        .unwrap();
    f.target
        .remove_lu(LunAddress { target: 0, lun: 0 })
        .unwrap();
    backend
        .handle_event(EVENT_QUEUE as u16, EventSet::IN, &vrings, 0)
        .unwrap();
    let ev: VirtioScsiEvent = f.mem.read_obj(GuestAddress(buf)).unwrap();
    assert_eq!(u32::from(ev.event), VIRTIO_SCSI_T_TRANSPORT_RESET);
    assert_eq!(u32::from(ev.reason), VIRTIO_SCSI_EVT_RESET_REMOVED);
}

#[test]
fn power_on_drops_changes_nobody_announced() {
    let r = rig(&[], 0);
    r.backend.acked_features(HOTPLUG_AND_CHANGE);
    r.f.target
        .remove_lu(LunAddress { target: 0, lun: 1 })
        .unwrap();
    r.f.target.power_on();
    r.event_buffer();
    r.kick(EVENT_QUEUE);
    assert!(r.used(EVENT_QUEUE).is_empty());
}
