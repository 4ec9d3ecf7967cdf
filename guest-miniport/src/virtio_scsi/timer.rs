//! HwTimer: the poll for TMF answers, device resets and events, the lost-interrupt
//! watchdog (or, without interrupts, the poll of every completion, T7), and arming the
//! next call through the hand-off with HwStartIo (T1, T4, T6).

use crate::contract::PlantedBug;
use crate::port::PortContext;
use crate::virtio::Transport;

use super::trail::push;
use super::{InterruptMode, ResetPhase, Source, VirtioScsi};

impl<T: Transport> VirtioScsi<T> {
    /// HwTimer: runs once per RequestTimerCall (T4) and re-arms while there is work.
    pub(super) fn timer_poll(&mut self, ctx: &mut PortContext<'_>) {
        // T6: consumed before the poll, so work HwStartIo queues meanwhile is either
        // found by this poll or arms a new call.
        self.timer_arm.consume();
        self.drain_events(ctx);
        self.drain_control(ctx, Source::Poll);
        self.check_tmf_deadline(ctx);
        self.continue_device_reset(ctx);
        let found = match self.settings.interrupts {
            InterruptMode::None => self.drain_requests(ctx, Source::Poll, u16::MAX),
            InterruptMode::Msix | InterruptMode::Intx => self.watchdog(ctx),
        };
        let t = &mut self.trail;
        push(
            &mut t.polls,
            &mut t.polls_len,
            &mut t.truncated,
            (ctx.now_us(), found),
        );
        // T4: HwTimer re-arms itself while there is something to poll for.
        self.arm_timer(ctx);
    }

    /// The lost-interrupt watchdog: completes what the device had returned by the
    /// previous call and still raised no interrupt for, then marks the ring again.
    /// Completions that came since are left for their interrupt (or the next call).
    fn watchdog(&mut self, ctx: &mut PortContext<'_>) -> u16 {
        if self.settings.bug == PlantedBug::DoubleCompletion {
            self.pop_peeked();
        }
        let lost = self
            .watch_mark
            .map_or(0, |mark| self.request.unpopped_at(mark));
        let found = if self.settings.bug == PlantedBug::DoubleCompletion {
            self.complete_in_place(ctx, lost)
        } else {
            self.drain_requests(ctx, Source::Poll, lost)
        };
        self.watch_mark = Some(self.request.used_mark());
        found
    }

    /// Arms HwTimer while there is something to poll for and it is not armed yet (T1:
    /// a new request would replace, and so postpone, the pending one).
    pub(super) fn arm_timer(&mut self, ctx: &mut PortContext<'_>) {
        if !self.settings.poll {
            return;
        }
        let busy = self.outstanding() > 0 || self.reset != ResetPhase::Idle;
        if busy && self.timer_arm.try_arm() {
            let interval = if self.reset != ResetPhase::Idle
                || self.settings.interrupts == InterruptMode::None
            {
                // TMF answers (and everything without interrupts) are polled each tick.
                self.settings.poll_interval_us
            } else {
                self.settings.watchdog_interval_us
            };
            ctx.request_timer_call(interval);
        }
    }
}
