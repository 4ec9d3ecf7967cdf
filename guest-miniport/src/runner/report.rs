//! The guest's report lines: the timeline event, and the result line with the
//! counters of the port, the miniport and the workload (names in
//! `contract::result_fields`).

use core::fmt::Write;

use crate::contract::{
    result_fields as rf, smoke_lba, timeline_fields as tf, GuestArgs, PlantedBug, EXIT_FAIL,
    EXIT_PASS,
};
use crate::platform::Platform;
use crate::port::{CpuStats, Port, Routine};
use crate::report::JsonLine;
use crate::virtio::Transport;
use crate::virtio_scsi::VirtioScsi;

use super::{Failure, Outcome, MAX_MEDIUM_ERROR_LBAS};

/// The index of `routine` in [`tf::CALL_ROUTINES`].
fn call_routine(routine: Routine) -> u64 {
    let name = routine.name();
    tf::CALL_ROUTINES
        .iter()
        .position(|&r| r == name)
        .unwrap_or(tf::CALL_ROUTINES.len()) as u64
}

/// The guest's side of the timeline (contract::timeline_fields).
pub(super) fn report_timeline<T: Transport>(out: &mut dyn Write, port: &Port<VirtioScsi<T>>) {
    let t = port.miniport().trail();
    port.with_calls(|calls, dropped| {
        let _ = JsonLine::event(out, tf::EVENT)
            .u64_pairs(
                tf::POLLS,
                &mut t.polls().iter().map(|&(at, n)| (at, u64::from(n))),
            )
            .u64_pairs(tf::RESETS, &mut t.resets().iter().copied())
            .u64_rows(
                tf::CALLS,
                &mut calls.iter().map(|c| {
                    let routine = call_routine(c.routine);
                    [c.start_us, u64::from(c.us), routine, u64::from(c.cpu)]
                }),
            )
            .bool(tf::TRUNCATED, t.truncated() || dropped > 0)
            .finish();
    });
}

/// A failure before the port exists: the result line with what is known.
pub(super) fn report_failure(
    platform: &mut dyn Platform,
    out: &mut dyn Write,
    args: Option<&GuestArgs>,
    failure: Failure<'_>,
) -> u8 {
    report_result(platform, out, args, &Outcome::default(), None, Err(failure))
}

/// Counters of the port and the miniport, for the result line.
pub trait Counters {
    fn counters(&self, line: &mut JsonLine<'_>);
}

/// `cpus`, and the routine calls of each CPU.
fn per_cpu(line: &mut JsonLine<'_>, cpus: usize, stats: &[CpuStats]) {
    line.u64(rf::CPUS, cpus as u64);
    for (cpu, s) in stats.iter().enumerate().take(cpus) {
        line.u64_keyed(&rf::per_cpu(rf::INTERRUPTS_CPU, cpu), s.interrupts)
            .u64_keyed(&rf::per_cpu(rf::TIMER_CALLS_CPU, cpu), s.timer_calls)
            .u64_keyed(&rf::per_cpu(rf::START_IO_CALLS_CPU, cpu), s.start_io_calls)
            .u64_keyed(&rf::per_cpu(rf::DEFERRED_CALLS_CPU, cpu), s.deferred_calls);
    }
}

impl<T: Transport> Counters for Port<VirtioScsi<T>> {
    fn counters(&self, line: &mut JsonLine<'_>) {
        let ms = self.miniport().stats();
        let t = self.miniport().trail();
        let ps = self.stats();
        per_cpu(line, self.routing().cpus, &ps.per_cpu);
        line.u64(rf::INTERRUPTS, ps.interrupts)
            .u64(rf::INTERRUPTS_NOT_CLAIMED, ps.interrupts_not_claimed)
            .u64(rf::ENABLE_CALLBACKS, ps.enable_callbacks)
            .u64(rf::DISABLE_CALLBACKS, ps.disable_callbacks)
            .u64(rf::TIMER_CALLS, ps.timer_calls)
            .u64(rf::SRB_TIMEOUTS, ps.srb_timeouts)
            .u64(rf::BUS_RESETS, ps.bus_resets)
            .u64(rf::BUS_RESET_RETRIES, ps.bus_reset_retries)
            .u64(rf::RECLAIMED, ps.reclaimed)
            .u64(rf::RESETS_DETECTED, ps.resets_detected);
        if let Some(t) = ms.first_request_us {
            line.u64(rf::FIRST_REQUEST_US, t);
        }
        line.u64(rf::COMPLETED_BY_INTERRUPT, ms.completed_by_interrupt)
            .u64(rf::COMPLETED_BY_POLL, ms.completed_by_poll)
            .u64_array(rf::POLLED_IDS, &mut t.polled_ids().iter().copied())
            .u64(rf::COMPLETED_AFTER_UNMASK, ms.completed_after_unmask)
            .u64(rf::STALE_COMPLETIONS, ms.stale_completions)
            .u64(rf::NOTIFICATIONS, ms.notifications)
            .u64(rf::TMFS_SENT, ms.tmfs_sent)
            .u64(rf::TMFS_COMPLETED, ms.tmfs_completed)
            .u64(rf::TMFS_FAILED, ms.tmfs_failed)
            .u64(rf::TMF_TIMEOUTS, ms.tmf_timeouts)
            .u64(rf::DEVICE_RESETS, ms.device_resets)
            .u64(rf::RESET_MAX_US, ms.reset_max_us)
            .u64(rf::RESET_TOTAL_US, ms.reset_total_us)
            .u64(rf::EVENTS, ms.events)
            .u64(rf::EVENTS_MISSED, ms.events_missed)
            .u64(rf::TRANSPORT_RESETS, ms.transport_resets)
            .u64(rf::PARAM_CHANGES, ms.param_changes)
            .u64(rf::CONFIG_CHANGES, ms.config_changes)
            .u64(rf::LAT_INTERRUPT_P50_US, t.latency_interrupt.percentile(50))
            .u64(rf::LAT_INTERRUPT_P99_US, t.latency_interrupt.percentile(99))
            .u64(rf::LAT_POLL_P50_US, t.latency_poll.percentile(50))
            .u64(rf::LAT_POLL_P99_US, t.latency_poll.percentile(99))
            .u64(
                rf::LAT_MAX_US,
                t.latency_interrupt.max().max(t.latency_poll.max()),
            );
    }
}

/// Writes the result line and returns the exit code.
pub(super) fn report_result(
    platform: &mut dyn Platform,
    out: &mut dyn Write,
    args: Option<&GuestArgs>,
    o: &Outcome,
    port: Option<&dyn Counters>,
    result: Result<(), Failure<'_>>,
) -> u8 {
    let mut line = JsonLine::new(out);
    line.str(rf::RESULT, if result.is_ok() { "pass" } else { "fail" });
    if let Err(e) = &result {
        line.display(rf::REASON, e).str(rf::FAILURE, e.kind());
        if let Some(op) = e.op() {
            line.str(rf::FAILED_OP, op);
        }
        if let Failure::Command {
            status,
            scsi_status,
            sense_key,
            ..
        } = e
        {
            line.str(rf::FAILED_SRB_STATUS, status.name())
                .u64(rf::FAILED_SCSI_STATUS, u64::from(*scsi_status));
            if let Some(k) = sense_key {
                line.u64(rf::FAILED_SENSE_KEY, u64::from(*k));
            }
        }
    }
    if let Some(a) = args {
        line.str(rf::SCENARIO, a.workload.name())
            .u64(rf::SEED, a.seed)
            .bool(rf::IRQ, a.irq)
            .bool(rf::POLL, a.poll);
        if a.bug != PlantedBug::None {
            line.str(rf::BUG, a.bug.name());
        }
    }
    line.u64(rf::BLOCK_SIZE, u64::from(o.block_size))
        .u64(rf::CAPACITY, o.capacity);
    match args {
        Some(a) if o.written => {
            let (seed, capacity, blocks) = (a.seed, o.capacity, a.blocks);
            line.u64_array(
                rf::LBAS,
                &mut (0..blocks).map(|i| smoke_lba(seed, capacity, blocks, i)),
            );
        }
        _ => {
            line.u64_array(rf::LBAS, &mut core::iter::empty());
        }
    }
    line.u64(rf::ELAPSED_US, platform.now_us());
    if let Some(p) = port {
        p.counters(&mut line);
    }
    let mut medium = o.medium_error_lbas.iter().copied();
    let listed = (o.medium_errors as usize).min(MAX_MEDIUM_ERROR_LBAS);
    line.u64(rf::REQUESTS, o.requests)
        .u64(rf::UNIT_ATTENTION_RETRIES, o.unit_attention_retries)
        .u64(rf::BUSY_RETRIES, o.busy_retries)
        .u64(rf::QUEUE_FULL_RETRIES, o.queue_full_retries)
        .u64(rf::MEDIUM_ERRORS, o.medium_errors)
        .u64_array(rf::MEDIUM_ERROR_LBAS, &mut medium.by_ref().take(listed))
        .u64(rf::RESCANS, o.rescans)
        .u64(rf::IOPS, o.iops)
        .u64(rf::VIOLATIONS, o.violations)
        .violations(rf::VIOLATION_LIST, &mut o.violation_list.iter().flatten())
        .u64(rf::HW_INTERRUPT_MAX_US, o.times.interrupt.max_us)
        .u64(rf::HW_INTERRUPT_TOTAL_US, o.times.interrupt.total_us)
        .u64(rf::HW_TIMER_MAX_US, o.times.timer.max_us)
        .u64(rf::HW_TIMER_TOTAL_US, o.times.timer.total_us)
        .u64(rf::HW_START_IO_MAX_US, o.times.start_io.max_us)
        .u64(rf::HW_START_IO_TOTAL_US, o.times.start_io.total_us)
        .u64(rf::STALL_MAX_US, u64::from(o.times.max_stall_us));
    let _ = line.finish();
    if result.is_ok() {
        EXIT_PASS
    } else {
        EXIT_FAIL
    }
}
