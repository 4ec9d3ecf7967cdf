//! The miniport's side: the routines the port calls (HwFindAdapter to HwResetBus and
//! the deferred interrupt callbacks), what they answer, and how they are synchronized:
//! concurrently as Storport runs them ([`Miniport`]), or one at a time as ScsiPort does
//! ([`SerialMiniport`] behind [`Serial`]).

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

/// How the port synchronizes a miniport's routines on several CPUs: Storport's
/// `SynchronizationModel` and its multi-channel mode (`PERF_CONFIGURATION_DATA`'s
/// concurrent channels). The port takes its locks by the table in `locks.rs`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Synchronization {
    /// StorSynchronizeFullDuplex: HwTimer and HwResetBus hold the StartIo lock only, not
    /// the interrupt lock; what they share with HwInterrupt the miniport reaches through
    /// [`PortContext::synchronize_access`] (T5). Half duplex: the port holds both.
    pub full_duplex: bool,
    /// Multi-channel: HwStartIo runs without the StartIo lock, so it is not synchronized
    /// with HwTimer, and the miniport guards what the two share (T6).
    pub multi_channel: bool,
}

impl Synchronization {
    /// Half duplex, one channel: HwTimer never overlaps HwInterrupt or HwStartIo.
    pub const HALF_DUPLEX: Synchronization = Synchronization {
        full_duplex: false,
        multi_channel: false,
    };
}

/// A miniport as Storport calls it: its routines take `&self`, because on a machine
/// with several CPUs they run at the same time wherever the port's locks allow it (the
/// table in `locks.rs`). Each routine reaches the port only through the
/// [`PortContext`] it is given. A miniport that wants every routine to run alone is a
/// [`SerialMiniport`] behind [`Serial`].
pub trait Miniport {
    /// Why HwFindAdapter or HwInitialize failed.
    type Error: fmt::Display;

    /// HwFindAdapter: find and configure the HBA; report its capabilities.
    fn find_adapter(&self, ctx: &mut PortContext<'_>) -> Result<AdapterCapabilities, Self::Error>;
    /// HwInitialize: make the HBA ready for I/O.
    fn initialize(&self, ctx: &mut PortContext<'_>) -> Result<(), Self::Error>;
    /// HwStartIo: start `srb`. To take another one the miniport must send NextRequest
    /// or NextLuRequest (N2, N3).
    fn start_io(&self, ctx: &mut PortContext<'_>, srb: SrbHandle) -> StartIo;
    /// HwInterrupt for MSI-X table entry `vector`: returns false at once when the
    /// interrupt is not this HBA's (I1).
    fn interrupt(&self, ctx: &mut PortContext<'_>, vector: u16) -> bool;
    /// HwTimer: runs once per RequestTimerCall (T4).
    fn timer(&self, ctx: &mut PortContext<'_>);
    /// HwResetBus: reset `path`, completing every active request (N5, P2).
    fn reset_bus(&self, ctx: &mut PortContext<'_>, path: u8) -> bool;
    /// HwEnableInterruptsCallback, after HwInterrupt asked for CallEnableInterrupts:
    /// finishes the deferred work with HwInterrupt held off, then asks for
    /// CallDisableInterrupts (I3, I4). The port calls it again on each dispatch until
    /// it does.
    fn enable_interrupts_callback(&self, _ctx: &mut PortContext<'_>) {}
    /// HwDisableInterruptsCallback: re-enables the HBA's interrupts (I4).
    fn disable_interrupts_callback(&self, _ctx: &mut PortContext<'_>) {}
    /// Whether the miniport has a HwTimer routine to pass to RequestTimerCall (N6, T7).
    fn has_timer(&self) -> bool {
        true
    }
    /// Whether a bus reset the miniport started is still under way (its TMFs not all
    /// answered, or the HBA being set up again), so the adapter is not idle yet. The
    /// port asks holding the interrupt lock.
    fn resetting(&self) -> bool {
        false
    }
    /// Completions the HBA has posted that the miniport has not taken yet: for the report
    /// of a run that gave up (they are there, but no interrupt or poll took them). The
    /// port asks holding the interrupt lock.
    fn completions_waiting(&self) -> u32 {
        0
    }
    /// The synchronization the miniport asks for; asked once, when the port is built.
    fn synchronization(&self) -> Synchronization {
        Synchronization::HALF_DUPLEX
    }
}

/// A miniport whose routines run one at a time, as ScsiPort runs every miniport: the
/// same routines as [`Miniport`], on `&mut self`. [`Serial`] makes it a [`Miniport`].
pub trait SerialMiniport {
    type Error: fmt::Display;
    fn find_adapter(
        &mut self,
        ctx: &mut PortContext<'_>,
    ) -> Result<AdapterCapabilities, Self::Error>;
    fn initialize(&mut self, ctx: &mut PortContext<'_>) -> Result<(), Self::Error>;
    fn start_io(&mut self, ctx: &mut PortContext<'_>, srb: SrbHandle) -> StartIo;
    fn interrupt(&mut self, ctx: &mut PortContext<'_>, vector: u16) -> bool;
    fn timer(&mut self, ctx: &mut PortContext<'_>);
    fn reset_bus(&mut self, ctx: &mut PortContext<'_>, path: u8) -> bool;
    fn enable_interrupts_callback(&mut self, _ctx: &mut PortContext<'_>) {}
    fn disable_interrupts_callback(&mut self, _ctx: &mut PortContext<'_>) {}
    fn has_timer(&self) -> bool {
        true
    }
    fn resetting(&self) -> bool {
        false
    }
    fn completions_waiting(&self) -> u32 {
        0
    }
}

/// A [`SerialMiniport`] behind one lock, taken around each of its routines: whatever
/// the port's locks allow, its routines never overlap.
pub struct Serial<M>(spin::Mutex<M>);

impl<M> Serial<M> {
    pub const fn new(miniport: M) -> Self {
        Serial(spin::Mutex::new(miniport))
    }

    /// The miniport, for its owner between routines. A routine running on another CPU
    /// holds it until it returns.
    pub fn lock(&self) -> spin::MutexGuard<'_, M> {
        self.0.lock()
    }
}

impl<M: SerialMiniport> Miniport for Serial<M> {
    type Error = M::Error;

    fn find_adapter(&self, ctx: &mut PortContext<'_>) -> Result<AdapterCapabilities, M::Error> {
        self.0.lock().find_adapter(ctx)
    }
    fn initialize(&self, ctx: &mut PortContext<'_>) -> Result<(), M::Error> {
        self.0.lock().initialize(ctx)
    }
    fn start_io(&self, ctx: &mut PortContext<'_>, srb: SrbHandle) -> StartIo {
        self.0.lock().start_io(ctx, srb)
    }
    fn interrupt(&self, ctx: &mut PortContext<'_>, vector: u16) -> bool {
        self.0.lock().interrupt(ctx, vector)
    }
    fn timer(&self, ctx: &mut PortContext<'_>) {
        self.0.lock().timer(ctx)
    }
    fn reset_bus(&self, ctx: &mut PortContext<'_>, path: u8) -> bool {
        self.0.lock().reset_bus(ctx, path)
    }
    fn enable_interrupts_callback(&self, ctx: &mut PortContext<'_>) {
        self.0.lock().enable_interrupts_callback(ctx)
    }
    fn disable_interrupts_callback(&self, ctx: &mut PortContext<'_>) {
        self.0.lock().disable_interrupts_callback(ctx)
    }
    fn has_timer(&self) -> bool {
        self.0.lock().has_timer()
    }
    fn resetting(&self) -> bool {
        self.0.lock().resetting()
    }
    fn completions_waiting(&self) -> u32 {
        self.0.lock().completions_waiting()
    }
}
