//! HwTimer: the poll for TMF answers, device resets and events, the lost-interrupt
//! watchdog (or, without interrupts, the poll of every completion, T7), and asking for
//! the next call, which the routine arms through the hand-off with HwStartIo (T1, T4,
//! T6).

use crate::contract::PlantedBug;
use crate::port::PortContext;
use crate::virtio::Transport;

use super::trail::push;
use super::{Extension, InterruptMode, ResetPhase, Source};

impl<T: Transport> Extension<T> {
    /// HwTimer: runs once per RequestTimerCall (T4) and re-arms while there is work.
    pub(super) fn timer_poll(&mut self, ctx: &mut PortContext<'_>) {
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
        self.arm_timer();
    }

    /// The lost-interrupt watchdog: completes what the device had returned by the
    /// previous call and still raised no interrupt for, then marks the ring again.
    /// Completions that came since are left for their interrupt (or the next call). On
    /// another CPU the interrupt CPU must have looked at its events since the mark:
    /// until it has, nothing counts as lost yet and the mark stays.
    fn watchdog(&mut self, ctx: &mut PortContext<'_>) -> u16 {
        if let Some((_, at)) = self.watch_mark {
            if ctx.interrupts_taken_until_us() < at {
                return 0;
            }
        }
        if self.settings.bug == PlantedBug::DoubleCompletion {
            self.pop_peeked();
        }
        let lost = self
            .watch_mark
            .map_or(0, |(mark, _)| self.request.unpopped_at(mark));
        let found = if self.settings.bug == PlantedBug::DoubleCompletion {
            self.complete_in_place(ctx, lost)
        } else {
            self.drain_requests(ctx, Source::Poll, lost)
        };
        self.watch_mark = Some((self.request.used_mark(), ctx.now_us()));
        found
    }

    /// Asks for HwTimer while there is something to poll for. The routine arms it
    /// through the hand-off once out of the extension, unless it is armed already (T1:
    /// a new request would replace, and so postpone, the pending one; T6).
    pub(super) fn arm_timer(&mut self) {
        if !self.settings.poll {
            return;
        }
        let busy = self.outstanding() > 0 || self.reset != ResetPhase::Idle;
        if busy {
            let interval = if self.reset != ResetPhase::Idle
                || self.settings.interrupts == InterruptMode::None
            {
                // TMF answers (and everything without interrupts) are polled each tick.
                self.settings.poll_interval_us
            } else {
                self.settings.watchdog_interval_us
            };
            self.timer_wanted = Some(interval);
        }
    }
}
