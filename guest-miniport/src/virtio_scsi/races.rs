//! The planted race bugs (`bug=timer-unlocked`, `bug=timer-arm-no-cas`): what the
//! miniport's routines do instead of the locked poll and the compare-and-exchange
//! hand-off. On one CPU the port never runs the routines involved at the same time, so
//! both pass unnoticed there; on two they race for real.

use crate::port::{PortContext, SrbHandle, StartIo};
use crate::virtio::Transport;

use super::VirtioScsi;

impl<T: Transport> VirtioScsi<T> {
    /// `timer-unlocked`: HwTimer polls the used ring and completes what it finds
    /// without SynchronizeAccess, so HwInterrupt on the interrupt CPU may be in the same
    /// state at the same time. The port flags that when it happens (T5).
    pub(super) fn timer_unlocked(&self, ctx: &mut PortContext<'_>) {
        let wanted = ctx.unsynchronized_access(&self.ext, |ctx, e| {
            e.timer_poll(ctx);
            e.timer_wanted.take()
        });
        self.arm(ctx, wanted);
    }

    /// `timer-arm-no-cas`: HwStartIo reads the flag before it queues its request and
    /// sets it afterwards, asking for HwTimer only if it was clear. If HwTimer, on
    /// another CPU (T6), consumed the pending call in between and did not see the new
    /// request, the flag stays set with no call pending: nothing polls again (T7).
    pub(super) fn start_io_without_cas(
        &self,
        ctx: &mut PortContext<'_>,
        srb: SrbHandle,
    ) -> StartIo {
        let was_armed = self.timer_arm.is_armed();
        let (r, wanted) = self.synchronized_wanting(ctx, |e, ctx| e.start_request(ctx, srb));
        self.arm_without_cas(ctx, was_armed, wanted);
        r
    }

    /// `timer-arm-no-cas`, HwTimer's side: the same read, then set, after its poll.
    pub(super) fn timer_without_cas(&self, ctx: &mut PortContext<'_>) {
        let (_, wanted) = self.synchronized_wanting(ctx, |e, ctx| e.timer_poll(ctx));
        let was_armed = self.timer_arm.is_armed();
        self.arm_without_cas(ctx, was_armed, wanted);
    }

    /// A load and a store where [`TimerArm::try_arm`] is one compare-and-exchange.
    ///
    /// [`TimerArm::try_arm`]: crate::port::handoff::TimerArm::try_arm
    fn arm_without_cas(&self, ctx: &mut PortContext<'_>, was_armed: bool, wanted: Option<u32>) {
        if let Some(interval) = wanted {
            self.timer_arm.set();
            if !was_armed {
                ctx.request_timer_call(interval);
            }
        }
    }
}
