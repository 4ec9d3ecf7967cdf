//! The virtio-scsi miniport and the runner on the simulated HBA: whole scenarios through
//! `run_scenario`, and single behaviours on a port with the miniport.

use std::string::String;

use serde_json::{json, Value};

use crate::contract::{check_pattern, smoke_lba, GuestArgs, Workload, EXIT_FAIL, EXIT_PASS};
use crate::platform::{Events, Platform};
use crate::port::{DataBuffer, Miniport, Port, PortConfig, Srb, SrbStatus};
use crate::runner::{miniport_settings, run, run_scenario};
use crate::virtio_scsi::{InterruptMode, ResetTmf, VirtioScsi, VirtioScsiSettings};
use crate::wire::*;

use super::*;

struct Run {
    world: SharedWorld,
    lines: Vec<Value>,
    exit: u8,
}

impl Run {
    fn result(&self) -> &Value {
        self.lines.last().unwrap()
    }
    fn n(&self, key: &str) -> u64 {
        self.result()[key]
            .as_u64()
            .unwrap_or_else(|| panic!("{key} missing in {}", self.result()))
    }
    fn ids(&self, key: &str) -> Vec<u64> {
        self.result()[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    }
    fn event(&self, name: &str) -> &Value {
        self.lines
            .iter()
            .find(|l| l["event"] == name)
            .unwrap_or_else(|| panic!("no {name} line"))
    }
    /// Passed, with the checker's report clean and every block in the disk.
    fn assert_clean(&self, a: &GuestArgs) {
        let r = self.result();
        assert_eq!(r["result"], "pass", "{r}");
        assert_eq!(self.exit, EXIT_PASS);
        assert_eq!(r["violations"], 0, "{r}");
        assert_eq!(r["violation_list"], json!([]));
        assert!(self.n("stall_max_us") <= 1000, "{r}");
        if a.workload.writes() {
            let w = self.world.borrow();
            let capacity = (w.disk.len() / 512) as u64;
            for i in 0..a.blocks {
                let lba = smoke_lba(a.seed, capacity, a.blocks, i) as usize;
                assert!(check_pattern(
                    a.seed,
                    lba as u64,
                    &w.disk[lba * 512..(lba + 1) * 512]
                ));
            }
        }
    }
}

fn run_in(world: SharedWorld, args: GuestArgs) -> Run {
    let mut platform = SimPlatform(world.clone());
    let mut dma = HostDma::default();
    let mut out = String::new();
    let exit = run_scenario(
        &mut platform,
        SimTransport(world.clone()),
        &mut dma,
        &args,
        &mut out,
    );
    let lines: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    Run { world, lines, exit }
}

fn simulate(args: GuestArgs, faults: SimFaults) -> Run {
    let world = World::new(8192, args.tick_us);
    world.borrow_mut().faults = faults;
    run_in(world, args)
}

fn args(irq: bool) -> GuestArgs {
    GuestArgs {
        irq,
        seed: 9,
        blocks: 16,
        queue_depth: 4,
        ..GuestArgs::default()
    }
}

/// A device that completes requests but never raises their interrupt.
fn dropping_interrupts() -> SimFaults {
    SimFaults {
        drop_interrupts: true,
        ..SimFaults::default()
    }
}

fn io(qd: u32) -> GuestArgs {
    GuestArgs {
        workload: Workload::Io,
        blocks: 24,
        queue_depth: qd,
        hold_ms: 100,
        ..args(true)
    }
}

/// Commands of a smoke run without retries: INQUIRY, READ CAPACITY, writes, reads.
fn commands(a: &GuestArgs) -> u64 {
    2 + 2 * u64::from(a.blocks)
}

#[test]
fn smoke_with_irq_on_completes_by_interrupt() {
    let a = args(true);
    let r = simulate(a, SimFaults::default());
    r.assert_clean(&a);
    assert_eq!(r.n("completed_by_interrupt"), commands(&a));
    assert_eq!(r.n("completed_by_poll"), 0);
    assert_eq!(r.n("interrupts_not_claimed"), 0);
    assert_eq!(r.n("capacity"), 8192);
    assert_eq!(r.n("block_size"), 512);
    assert_eq!(r.n("requests"), commands(&a));
    assert!(r.result()["first_request_us"].is_u64());
    let w = r.world.borrow();
    assert!(w.msix_enabled);
    assert_ne!(w.queues[2].vector, VIRTIO_MSI_NO_VECTOR);
    assert_ne!(w.driver_features & VIRTIO_RING_F_EVENT_IDX, 0);
    assert_eq!(w.driver_features & VIRTIO_RING_F_INDIRECT_DESC, 0);
    assert_eq!(w.event_buffers_seen, 8);
    assert_eq!(w.suppressed_fault, 0);
    let inquiry = r.event("inquiry");
    assert_eq!(inquiry["vendor"], "FLAKYSIM");
    assert_eq!(inquiry["product"], "RAM DISK \"q\"");
    let result = r.result();
    assert_eq!(result["scenario"], "smoke");
    assert_eq!(result["irq"], true);
    assert_eq!(result["poll"], true);
    let expect: Vec<u64> = (0..16).map(|i| smoke_lba(9, 8192, 16, i)).collect();
    assert_eq!(r.ids("lbas"), expect);
    // The timeline line comes just before the result.
    let timeline = &r.lines[r.lines.len() - 2];
    assert_eq!(timeline["event"], "timeline");
    assert_eq!(timeline["resets"], json!([]));
    assert_eq!(timeline["truncated"], false);
}

#[test]
fn deferred_completion_runs_the_callbacks_and_completes_every_request() {
    let a = GuestArgs {
        deferred: true,
        ..io(4)
    };
    let r = simulate(a, SimFaults::default());
    r.assert_clean(&a);
    // Every completion came through the interrupt path, all of them in the deferred
    // callbacks: one enable and one disable callback per request-queue interrupt HwInterrupt
    // claimed (I3, I4), on the one CPU there is.
    assert_eq!(r.n("completed_by_interrupt"), r.n("requests"));
    assert_eq!(r.n("completed_by_poll"), 0);
    let enable = r.n("enable_callbacks");
    assert!(enable >= 8, "{}", r.result());
    assert_eq!(r.n("disable_callbacks"), enable);
    assert_eq!(r.n("deferred_calls_cpu0"), 2 * enable);
    assert!(r.n("interrupts") - r.n("interrupts_not_claimed") >= enable);
    assert_eq!(r.result()["violation_list"], json!([]));
    // Off, nothing is deferred.
    let off = simulate(io(4), SimFaults::default());
    off.assert_clean(&io(4));
    assert_eq!(off.n("enable_callbacks"), 0);
    assert_eq!(off.n("deferred_calls_cpu0"), 0);
}

#[test]
fn smoke_with_irq_off_completes_by_poll() {
    let a = args(false);
    let r = simulate(a, SimFaults::default());
    r.assert_clean(&a);
    assert_eq!(r.n("completed_by_poll"), commands(&a));
    assert_eq!(r.n("completed_by_interrupt"), 0);
    assert_eq!(r.n("interrupts"), 0);
    assert!(r.n("timer_calls") > 0);
    let w = r.world.borrow();
    assert!(!w.msix_enabled);
    assert_eq!(w.interrupts_raised, 0);
    assert!(w.queues.iter().all(|q| q.vector == VIRTIO_MSI_NO_VECTOR));
    assert_eq!(w.config_vector, VIRTIO_MSI_NO_VECTOR);
    // Every HwTimer call is on the timeline, with what it found.
    let polls = r.event("timeline")["polls"].as_array().unwrap().clone();
    assert_eq!(polls.len() as u64, r.n("timer_calls"));
    let found: u64 = polls.iter().map(|p| p[1].as_u64().unwrap()).sum();
    assert_eq!(found, commands(&a));
}

#[test]
fn lost_interrupts_are_found_by_the_hwtimer_watchdog() {
    let a = args(true);
    let r = simulate(a, dropping_interrupts());
    r.assert_clean(&a);
    assert_eq!(r.n("completed_by_poll"), commands(&a));
    assert_eq!(r.n("completed_by_interrupt"), 0);
    // Every completion was withheld: by the fault, or by EVENT_IDX because the
    // driver had not taken the earlier ones yet.
    let w = r.world.borrow();
    assert_eq!(
        u64::from(w.suppressed_fault + w.suppressed_event_idx),
        commands(&a)
    );
    assert!(r.n("lat_poll_p50_us") >= u64::from(a.watchdog_us));
}

#[test]
fn at_queue_depth_1_the_polled_completions_are_exactly_the_suppressed_ones() {
    let a = GuestArgs {
        queue_depth: 1,
        ..args(true)
    };
    let r = simulate(
        a,
        SimFaults {
            drop_every: Some(3),
            ..SimFaults::default()
        },
    );
    r.assert_clean(&a);
    let w = r.world.borrow();
    assert_eq!(w.suppressed_event_idx, 0);
    assert_eq!(r.n("completed_by_poll"), u64::from(w.suppressed_fault));
    assert_eq!(r.ids("polled_ids"), w.suppressed_ids);
    assert_eq!(
        r.n("completed_by_poll") + r.n("completed_by_interrupt"),
        commands(&a)
    );
    assert_eq!(w.suppressed_fault as u64, commands(&a) / 3);
}

/// The miniport's settings for the command line's defaults, MSI-X (`irq`) or
/// polling only.
fn settings(irq: bool) -> VirtioScsiSettings {
    miniport_settings(&GuestArgs {
        irq,
        ..GuestArgs::default()
    })
}

/// A port with the virtio-scsi miniport on a simulated device, initialized.
fn port_on(
    world: &SharedWorld,
    dma: &mut HostDma,
    config: VirtioScsiSettings,
    hold_us: u32,
) -> (Port<VirtioScsi<SimTransport>>, SimPlatform) {
    let mut p = SimPlatform(world.clone());
    let m = VirtioScsi::new(SimTransport(world.clone()), dma, config).unwrap();
    let port = Port::with_config(
        m,
        PortConfig {
            reset_hold_us: hold_us,
            ..PortConfig::new(world.borrow().tick_us)
        },
    );
    port.initialize(&mut p).unwrap();
    (port, p)
}

fn tur() -> Srb {
    Srb::new(0, 0, 0, &[0u8; 6], DataBuffer::NONE)
}

#[test]
fn a_completion_is_lost_only_after_a_whole_watchdog_period() {
    let world = World::new(64, 10_000);
    let mut dma = HostDma::default();
    let (port, mut p) = port_on(&world, &mut dma, settings(true), 0);
    world.borrow_mut().faults.drop_interrupts = true;
    port.submit(tur()).unwrap();
    port.run_once(&mut p);
    // The first HwTimer call after the completion only marks it.
    while port.stats().timer_calls == 0 {
        port.run_once(&mut p);
    }
    assert!(port.poll_completed().is_none());
    assert_eq!(port.miniport().stats().completed_by_poll, 0);
    // An interrupt now (late, but there) still counts as one.
    world.borrow_mut().spurious(usize::from(REQUESTQ));
    port.run_once(&mut p);
    assert_eq!(port.miniport().stats().completed_by_interrupt, 1);
    assert_eq!(
        port.poll_completed().unwrap().srb_status,
        SrbStatus::Success
    );

    // Without any interrupt, the second HwTimer call finds it.
    port.submit(tur()).unwrap();
    let calls = port.stats().timer_calls;
    while port.poll_completed().is_none() {
        port.run_once(&mut p);
    }
    assert_eq!(port.miniport().stats().completed_by_poll, 1);
    assert_eq!(port.stats().timer_calls, calls + 2);
    assert_eq!(port.checker().count(), 0);
}

#[test]
fn stale_completion_id_is_ignored_and_counted() {
    for irq in [true, false] {
        let a = args(irq);
        let r = simulate(
            a,
            SimFaults {
                duplicate_completion: Some(5),
                ..SimFaults::default()
            },
        );
        r.assert_clean(&a);
        assert_eq!(r.n("stale_completions"), 1, "irq={irq}");
        assert_eq!(
            r.n("completed_by_interrupt") + r.n("completed_by_poll"),
            commands(&a)
        );
    }
}

#[test]
fn unit_attention_is_retried() {
    let a = args(true);
    let r = simulate(
        a,
        SimFaults {
            unit_attention_once: true,
            ..SimFaults::default()
        },
    );
    r.assert_clean(&a);
    assert_eq!(r.n("unit_attention_retries"), 1);
    assert_eq!(r.n("requests"), commands(&a) + 1);
    assert_eq!(r.world.borrow().commands[..2], [0x12, 0x12]);
}

#[test]
fn smoke_without_event_idx_and_deep_queue() {
    let world = World::new(4096, 1000);
    world.borrow_mut().offered_features = VIRTIO_F_VERSION_1;
    let a = GuestArgs {
        blocks: 100,
        queue_depth: 64,
        tick_us: 1000,
        ..GuestArgs::default()
    };
    let r = run_in(world, a);
    r.assert_clean(&a);
    assert_eq!(
        r.world.borrow().driver_features & VIRTIO_RING_F_EVENT_IDX,
        0
    );
    assert_eq!(r.n("completed_by_interrupt"), 202);
}

#[test]
fn reset_bus_sends_lu_resets_and_the_port_retries_the_aborted_requests() {
    let world = World::new(64, 10_000);
    world.borrow_mut().faults.hold_requests = true;
    let mut dma = HostDma::default();
    let (port, mut p) = port_on(&world, &mut dma, settings(true), 50_000);
    let a = port.submit(tur()).unwrap();
    let b = port.submit(tur()).unwrap();
    for _ in 0..5 {
        port.run_once(&mut p);
    }
    assert_eq!(port.active(), 2, "the device holds both");
    assert!(port.poll_completed().is_none());

    let resets_before = world.borrow().device_resets;
    world.borrow_mut().faults.hold_requests = false;
    assert!(port.reset_bus(&mut p, 0));
    let reset_at = p.now_us();
    // The TMF's answer and the aborted commands come back at once, by interrupt.
    assert_eq!(
        world.borrow().tmfs,
        [(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, 0, 0)]
    );
    port.run_once(&mut p);
    let s = port.miniport().stats();
    assert_eq!((s.tmfs_sent, s.tmfs_completed, s.device_resets), (1, 1, 0));
    assert!(!port.miniport().resetting());
    // The aborted SRBs are queued again by the port, held until the hold ends.
    assert_eq!(port.stats().bus_reset_retries, 2);
    assert!(port.poll_completed().is_none());
    port.run_until_idle(&mut p, reset_at + 10_000_000).unwrap();
    assert!(p.now_us() >= reset_at + 50_000);
    let done: Vec<_> = core::iter::from_fn(|| port.poll_completed()).collect();
    assert_eq!(done.len(), 2);
    assert!(done.iter().all(|s| s.srb_status == SrbStatus::Success));
    let mut tags = [done[0].tag, done[1].tag];
    tags.sort();
    assert_eq!(tags, [a, b]);
    assert_eq!(
        world.borrow().device_resets,
        resets_before,
        "no device reset"
    );
    assert_eq!(port.miniport().trail().resets().len(), 1);
    assert_eq!(
        port.checker().count(),
        0,
        "{:?}",
        port.checker().violations().collect::<Vec<_>>()
    );
}

#[test]
fn a_nexus_reset_covers_the_target() {
    let world = World::new(64, 10_000);
    world.borrow_mut().faults.hold_requests = true;
    let mut dma = HostDma::default();
    let config = VirtioScsiSettings {
        reset: ResetTmf::ItNexus,
        ..settings(true)
    };
    let (port, mut p) = port_on(&world, &mut dma, config, 0);
    port.submit(tur()).unwrap();
    port.run_once(&mut p);
    world.borrow_mut().faults.hold_requests = false;
    port.reset_bus(&mut p, 0);
    assert_eq!(
        world.borrow().tmfs,
        [(VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET, 0, 0)]
    );
    port.run_until_idle(&mut p, 1_000_000).unwrap();
    assert_eq!(
        port.poll_completed().unwrap().srb_status,
        SrbStatus::Success
    );
    assert_eq!(port.checker().count(), 0);
}

/// The port, its platform and the device after a bus reset; the DMA memory the
/// miniport's rings live in goes with them.
struct AfterReset {
    port: Port<VirtioScsi<SimTransport>>,
    world: SharedWorld,
    _dma: HostDma,
}

/// Holds two requests, resets the bus with the device answering TMFs as `tmf`, and
/// runs until both are done or 3 s passed.
fn reset_with(tmf: SimTmf, poll: bool) -> AfterReset {
    let world = World::new(64, 10_000);
    world.borrow_mut().faults.hold_requests = true;
    world.borrow_mut().faults.tmf = tmf;
    let mut dma = HostDma::default();
    let config = VirtioScsiSettings {
        poll,
        tmf_timeout_us: 300_000,
        ..settings(true)
    };
    let (port, mut p) = port_on(&world, &mut dma, config, 1_000_000);
    port.submit(tur()).unwrap();
    port.submit(tur()).unwrap();
    port.run_once(&mut p);
    world.borrow_mut().faults.hold_requests = false;
    assert!(port.reset_bus(&mut p, 0));
    let start = p.now_us();
    let _ = port.run_until_idle(&mut p, start + 3_000_000);
    AfterReset {
        port,
        world,
        _dma: dma,
    }
}

#[test]
fn hung_tmf_escalates_to_a_device_reset() {
    let AfterReset { port, world, .. } = reset_with(SimTmf::Hang, true);
    let s = port.miniport().stats();
    assert_eq!((s.tmfs_sent, s.tmfs_completed, s.tmf_timeouts), (1, 0, 1));
    assert_eq!(s.device_resets, 1);
    assert!(s.reset_max_us >= 300_000, "{}", s.reset_max_us);
    let done: Vec<_> = core::iter::from_fn(|| port.poll_completed()).collect();
    assert_eq!(done.len(), 2);
    assert!(done.iter().all(|s| s.srb_status == SrbStatus::Success));
    assert_eq!(port.stats().bus_reset_retries, 2);
    assert_ne!(world.borrow().status & VIRTIO_CONFIG_S_DRIVER_OK, 0);
    assert_eq!(
        port.checker().count(),
        0,
        "{:?}",
        port.checker().violations().collect::<Vec<_>>()
    );
    assert!(port.checker().times().max_stall_us <= 1000);
}

#[test]
fn failed_tmf_escalates_to_a_device_reset() {
    let port = reset_with(SimTmf::Answer(11), true).port;
    let s = port.miniport().stats();
    assert_eq!((s.tmfs_failed, s.tmf_timeouts, s.device_resets), (1, 0, 1));
    assert_eq!(core::iter::from_fn(|| port.poll_completed()).count(), 2);
    assert_eq!(port.checker().count(), 0);
}

#[test]
fn slow_tmf_is_polled_by_the_timer_without_stalling() {
    let port = reset_with(SimTmf::Slow(200_000), true).port;
    let s = port.miniport().stats();
    assert_eq!(
        (s.tmfs_completed, s.tmf_timeouts, s.device_resets),
        (1, 0, 0)
    );
    assert!(s.reset_max_us >= 200_000, "{}", s.reset_max_us);
    let (start, end) = port.miniport().trail().resets()[0];
    assert_eq!(end - start, s.reset_max_us);
    assert_eq!(core::iter::from_fn(|| port.poll_completed()).count(), 2);
    assert_eq!(port.checker().count(), 0);
    assert_eq!(port.checker().times().max_stall_us, 0);
}

#[test]
fn without_the_timer_a_hung_tmf_is_never_given_up() {
    let port = reset_with(SimTmf::Hang, false).port;
    let s = port.miniport().stats();
    assert_eq!((s.tmf_timeouts, s.device_resets), (0, 0));
    // The hold ended with both requests still on the device: P2.
    assert!(port
        .checker()
        .violations()
        .any(|v| v.rule == crate::port::Rule::P2));
}

#[test]
fn a_run_ends_only_when_its_bus_reset_has_ended() {
    // With the timer, the hung TMF is given up on and the run passes; without it,
    // the workload finishes its I/O but the reset never ends.
    for poll in [true, false] {
        let a = GuestArgs {
            workload: Workload::ResetUnderLoad,
            reset_after: 4,
            poll,
            tmf_timeout_ms: 300,
            deadline_ms: 3000,
            ..io(4)
        };
        let r = simulate(
            a,
            SimFaults {
                tmf: SimTmf::Hang,
                delay_us: 1000,
                ..SimFaults::default()
            },
        );
        if poll {
            r.assert_clean(&a);
            assert_eq!((r.n("tmf_timeouts"), r.n("device_resets")), (1, 1));
        } else {
            assert_eq!(r.exit, EXIT_FAIL);
            assert_eq!(
                r.result()["reason"],
                "the bus reset had not ended at the deadline"
            );
            assert_eq!(r.n("device_resets"), 0);
        }
    }
}

#[test]
fn lost_command_times_out_resets_the_bus_and_is_retried() {
    let a = GuestArgs {
        srb_timeout_ms: 300,
        ..io(4)
    };
    let r = simulate(
        a,
        SimFaults {
            lose: Some(10),
            ..SimFaults::default()
        },
    );
    r.assert_clean(&a);
    assert_eq!(r.n("srb_timeouts"), 1);
    assert_eq!(r.n("bus_resets"), 1);
    assert_eq!((r.n("tmfs_sent"), r.n("tmfs_completed")), (1, 1));
    assert!(r.n("bus_reset_retries") >= 1);
    assert_eq!(r.n("device_resets"), 0);
    assert_eq!(r.event("timeline")["resets"].as_array().unwrap().len(), 1);
}

#[test]
fn reset_under_load_verifies_every_block() {
    let a = GuestArgs {
        workload: Workload::ResetUnderLoad,
        reset_after: 8,
        ..io(8)
    };
    let r = simulate(
        a,
        SimFaults {
            delay_us: 2000,
            ..SimFaults::default()
        },
    );
    r.assert_clean(&a);
    assert_eq!(r.n("bus_resets"), 1);
    // The writes the LU reset aborted were sent again (and read back above).
    assert!(r.n("bus_reset_retries") >= 1);
    assert_eq!(r.n("tmfs_completed"), 1);
}

#[test]
fn busy_and_task_set_full_are_retried_after_a_pause() {
    for (status, key) in [(0x08, "busy_retries"), (0x28, "queue_full_retries")] {
        let a = io(4);
        let r = simulate(
            a,
            SimFaults {
                status_every: Some((5, status)),
                ..SimFaults::default()
            },
        );
        r.assert_clean(&a);
        let retries = r.n(key);
        assert!(retries >= 5, "{key} {retries}");
        assert_eq!(r.n("requests"), 2 + 2 * 24 + retries, "{key}");
    }
}

#[test]
fn medium_errors_are_counted_not_fatal() {
    let a = io(4);
    let capacity = 8192;
    let lbas: Vec<u64> = (0..a.blocks)
        .map(|i| smoke_lba(a.seed, capacity, a.blocks, i))
        .collect();
    let (first, last) = (lbas[3], lbas[6]);
    let r = simulate(
        a,
        SimFaults {
            medium_error: Some((first, last)),
            ..SimFaults::default()
        },
    );
    r.assert_clean(&a);
    assert_eq!(r.n("medium_errors"), 4);
    let mut listed = r.ids("medium_error_lbas");
    listed.sort();
    assert_eq!(listed, lbas[3..=6]);
    assert_eq!(r.event("verified")["unreadable"], 4);
}

#[test]
fn transport_reset_event_leads_to_reset_detected_and_a_rescan() {
    let a = io(4);
    let r = simulate(
        a,
        SimFaults {
            transport_reset_after: Some(10),
            ..SimFaults::default()
        },
    );
    r.assert_clean(&a);
    assert_eq!(r.n("transport_resets"), 1);
    assert_eq!(r.n("events"), 1);
    assert_eq!(r.n("resets_detected"), 1);
    assert_eq!(r.n("rescans"), 1);
    assert!(
        r.world.borrow().commands.contains(&0xa0),
        "REPORT LUNS sent"
    );
}

#[test]
fn a_command_lost_at_a_transport_reset_is_ended_before_the_hold_is_over() {
    // N5: the event's ResetDetected wants every active request completed by the end of
    // the hold; the device never returns the lost one, so the miniport resets its LU.
    let a = GuestArgs {
        srb_timeout_ms: 60_000,
        ..io(4)
    };
    let r = simulate(
        a,
        SimFaults {
            lose: Some(12),
            transport_reset_after: Some(14),
            ..SimFaults::default()
        },
    );
    r.assert_clean(&a);
    assert_eq!(r.n("resets_detected"), 1);
    assert_eq!(r.n("srb_timeouts"), 0);
    assert!(r.n("tmfs_sent") >= 1, "{}", r.result());
    assert!(r.n("bus_reset_retries") >= 1, "{}", r.result());
}

#[test]
fn delayed_completions_still_come_by_interrupt() {
    let a = io(4);
    let r = simulate(
        a,
        SimFaults {
            delay_us: 50_000,
            ..SimFaults::default()
        },
    );
    r.assert_clean(&a);
    assert_eq!(r.n("completed_by_poll"), 0);
    assert!(r.n("lat_interrupt_p50_us") >= 50_000);
}

#[test]
fn without_the_timer_poll_lost_interrupts_are_never_found() {
    let a = GuestArgs {
        poll: false,
        srb_timeout_ms: 200,
        deadline_ms: 2000,
        retries: 1,
        ..io(4)
    };
    let r = simulate(a, dropping_interrupts());
    assert_eq!(r.exit, EXIT_FAIL);
    assert_eq!(r.result()["result"], "fail");
    assert!(r.n("srb_timeouts") >= 1, "{}", r.result());
    assert_eq!(r.n("completed_by_poll"), 0);
    assert_eq!(r.n("timer_calls"), 0);
}

#[test]
fn a_run_that_gives_up_says_which_completions_no_interrupt_took() {
    // No polling and no SRB timeout within the run: the first command's completion
    // sits in the used ring until the deadline, and the report says so.
    let a = GuestArgs {
        poll: false,
        srb_timeout_ms: 60_000,
        deadline_ms: 500,
        ..io(4)
    };
    let r = simulate(a, dropping_interrupts());
    assert_eq!(r.exit, EXIT_FAIL);
    assert_eq!(
        r.result()["reason"],
        "INQUIRY: 1 requests outstanding at the deadline \
         (1 completed in the used ring, never taken: no interrupt came)"
    );
}

#[test]
fn bench_reports_iops_and_latency_per_path() {
    // Queue depth 1: no later interrupt rescues a withheld one.
    let a = GuestArgs {
        workload: Workload::Bench,
        blocks: 200,
        queue_depth: 1,
        ..args(true)
    };
    let r = simulate(
        a,
        SimFaults {
            drop_every: Some(4),
            delay_us: 100,
            ..SimFaults::default()
        },
    );
    r.assert_clean(&a);
    assert!(r.n("iops") > 0);
    assert_eq!(r.ids("lbas"), Vec::<u64>::new(), "bench writes nothing");
    assert!(r.n("lat_interrupt_p50_us") >= 100);
    assert!(r.n("lat_poll_p50_us") >= r.n("lat_interrupt_p50_us"));
    assert!(r.n("lat_max_us") >= r.n("lat_poll_p99_us"));
    assert_eq!(r.event("bench")["reads"], 200);
}

#[test]
fn spurious_interrupts_are_not_claimed() {
    let world = World::new(64, 10_000);
    let mut dma = HostDma::default();
    let (port, mut p) = port_on(&world, &mut dma, settings(true), 0);
    // Every vector the adapter has (config 0, control 1, event 2, request 3), with
    // nothing new anywhere.
    port.dispatch(
        &mut p,
        Events {
            ticks: 0,
            vectors: 0b1111,
        },
    );
    assert_eq!(port.stats().interrupts, 4);
    assert_eq!(port.stats().interrupts_not_claimed, 4);

    world.borrow_mut().faults.drop_interrupts = true;
    port.submit(tur()).unwrap();
    port.run_once(&mut p);
    // The request vector with a completion in the used ring: claimed and completed.
    port.dispatch(
        &mut p,
        Events {
            ticks: 0,
            vectors: 1 << 3,
        },
    );
    assert_eq!(port.stats().interrupts_not_claimed, 4);
    assert_eq!(
        port.poll_completed().unwrap().srb_status,
        SrbStatus::Success
    );
    assert_eq!(port.miniport().stats().completed_by_interrupt, 1);
    // The same vector again: nothing new, not ours.
    world.borrow_mut().spurious(usize::from(REQUESTQ));
    port.run_once(&mut p);
    assert_eq!(port.stats().interrupts_not_claimed, 5);
    assert_eq!(port.checker().count(), 0);
}

#[test]
fn i1_intx_looks_at_each_isr_bit_on_its_own() {
    let world = World::new(64, 10_000);
    world.borrow_mut().intx_routed = true;
    let mut dma = HostDma::default();
    let config = VirtioScsiSettings {
        interrupts: InterruptMode::Intx,
        ..settings(true)
    };
    let (port, mut p) = port_on(&world, &mut dma, config, 0);
    assert!(!world.borrow().msix_enabled);
    let line = Events {
        ticks: 0,
        vectors: 1,
    };
    // No bit: another device's interrupt on the shared line.
    port.dispatch(&mut p, line);
    assert_eq!(port.stats().interrupts_not_claimed, 1);
    // The configuration bit alone: a config change, no queue work.
    world.borrow_mut().config_change();
    world.borrow_mut().pending_vectors = 0;
    world.borrow_mut().faults.drop_interrupts = true;
    port.submit(tur()).unwrap();
    port.run_once(&mut p);
    assert_eq!(
        port.miniport().outstanding(),
        1,
        "completion waits in the ring"
    );
    port.dispatch(&mut p, line);
    assert_eq!(port.stats().interrupts_not_claimed, 1);
    assert_eq!(port.miniport().stats().config_changes, 1);
    assert_eq!(
        port.miniport().outstanding(),
        1,
        "CONFIG does not drain queues"
    );
    // The queue bit alone: the queues are drained, no config change.
    world.borrow_mut().isr = VIRTIO_PCI_ISR_QUEUE;
    port.dispatch(&mut p, line);
    assert_eq!(port.miniport().outstanding(), 0);
    assert_eq!(port.miniport().stats().config_changes, 1);
    assert_eq!(port.miniport().stats().completed_by_interrupt, 1);
    // Both bits at once: both handled.
    world.borrow_mut().config_change();
    world.borrow_mut().isr |= VIRTIO_PCI_ISR_QUEUE;
    port.dispatch(&mut p, line);
    assert_eq!(port.miniport().stats().config_changes, 2);
    assert_eq!(port.stats().interrupts_not_claimed, 1);
    assert_eq!(port.checker().count(), 0);
}

#[test]
fn device_without_version_1_fails_the_scenario() {
    let world = World::new(64, 10_000);
    world.borrow_mut().offered_features = 0;
    let r = run_in(world, args(true));
    assert_eq!(r.exit, EXIT_FAIL);
    let reason = r.result()["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("VERSION_1"), "{reason}");
    assert_ne!(r.world.borrow().status & VIRTIO_CONFIG_S_FAILED, 0);
}

#[test]
fn run_reports_bad_arguments_and_missing_device() {
    let world = World::new(64, 10_000);
    let mut platform = SimPlatform(world);
    let mut dma = HostDma::default();
    let pci = FakePci::default();
    let mut out = String::new();
    assert_eq!(
        run(&mut platform, &pci, &mut dma, "irq=sometimes", &mut out),
        EXIT_FAIL
    );
    let line: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["result"], "fail");
    assert_eq!(
        line["reason"],
        "bad command line: bad value \"sometimes\" for irq"
    );

    let mut out = String::new();
    assert_eq!(
        run(&mut platform, &pci, &mut dma, "workload=smoke", &mut out),
        EXIT_FAIL
    );
    let line: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(line["reason"], "no virtio-scsi PCI function on bus 0");
    assert_eq!(line["scenario"], "smoke");
    assert_eq!(line["lbas"], json!([]));
}
