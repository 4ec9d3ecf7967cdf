//! The miniport's side: the routines the port calls (HwFindAdapter to HwResetBus and
//! the deferred interrupt callbacks) and what they answer.

use core::fmt;

use super::{PortContext, SrbHandle};

/// HwStartIo's answer.
#[derive(Debug, PartialEq, Eq)]
pub enum StartIo {
    /// The miniport owns the SRB until it sends RequestComplete.
    Accepted,
    /// The miniport cannot take it now and gives it back; the port requeues it at the
    /// front and retries after the miniport's next NextRequest/NextLuRequest.
    Busy(SrbHandle),
}

/// What HwFindAdapter reports about the HBA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdapterCapabilities {
    /// Most SRBs the miniport takes at once over all LUs.
    pub max_outstanding: u16,
    /// The HBA queues several requests per LU, so NextLuRequest is allowed (N3).
    pub tagged_queuing: bool,
    /// Most SRBs outstanding on one LU when `tagged_queuing`.
    pub queue_depth: u16,
    /// The miniport takes interrupts. Without them it must poll from HwTimer (T7).
    pub interrupts: bool,
}

/// A miniport: the HBA-specific routines the port calls. Each routine reaches the port
/// only through the [`PortContext`] it is given.
pub trait Miniport {
    /// Why HwFindAdapter or HwInitialize failed.
    type Error: fmt::Display;

    /// HwFindAdapter: find and configure the HBA; report its capabilities.
    fn find_adapter(
        &mut self,
        ctx: &mut PortContext<'_>,
    ) -> Result<AdapterCapabilities, Self::Error>;
    /// HwInitialize: make the HBA ready for I/O.
    fn initialize(&mut self, ctx: &mut PortContext<'_>) -> Result<(), Self::Error>;
    /// HwStartIo: start `srb`. To take another one the miniport must send NextRequest
    /// or NextLuRequest (N2, N3).
    fn start_io(&mut self, ctx: &mut PortContext<'_>, srb: SrbHandle) -> StartIo;
    /// HwInterrupt for MSI-X table entry `vector`: returns false at once when the
    /// interrupt is not this HBA's (I1).
    fn interrupt(&mut self, ctx: &mut PortContext<'_>, vector: u16) -> bool;
    /// HwTimer: runs once per RequestTimerCall (T4).
    fn timer(&mut self, ctx: &mut PortContext<'_>);
    /// HwResetBus: reset `path`, completing every active request (N5, P2).
    fn reset_bus(&mut self, ctx: &mut PortContext<'_>, path: u8) -> bool;
    /// HwEnableInterruptsCallback, after HwInterrupt asked for CallEnableInterrupts:
    /// finishes the deferred work with HwInterrupt held off, then asks for
    /// CallDisableInterrupts (I3, I4). The port calls it again on each dispatch until
    /// it does.
    fn enable_interrupts_callback(&mut self, _ctx: &mut PortContext<'_>) {}
    /// HwDisableInterruptsCallback: re-enables the HBA's interrupts (I4).
    fn disable_interrupts_callback(&mut self, _ctx: &mut PortContext<'_>) {}
    /// Whether the miniport has a HwTimer routine to pass to RequestTimerCall (N6, T7).
    fn has_timer(&self) -> bool {
        true
    }
    /// Whether a bus reset the miniport started is still under way (its TMFs not all
    /// answered, or the HBA being set up again), so the adapter is not idle yet.
    fn resetting(&self) -> bool {
        false
    }
    /// Completions the HBA has posted that the miniport has not taken yet: for the report
    /// of a run that gave up (they are there, but no interrupt or poll took them).
    fn completions_waiting(&self) -> u32 {
        0
    }
}
