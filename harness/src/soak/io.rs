//! The soak's I/O on one frontend connection, all queues driven by one thread: random
//! stamped writes and checked reads on every request queue, completions fed to the
//! [`Model`], and the escalation a driver uses for commands that do not come back
//! (ABORT TASK or LOGICAL UNIT RESET, then a device reset).

use std::time::{Duration, Instant};

use crate::bench::frontend::load::Rng;
use crate::bench::frontend::queue::{wait_any, Completion, DataDir, ScsiQueue};
use crate::bench::frontend::scsi::{self, ScsiAddress};
use crate::bench::frontend::{check_good, FrontendError, ScsiFrontend};

use super::model::{Mismatch, Model};
use super::stamp::{stamp_blocks, BLOCK};

/// A command in flight this long gets a TMF: longer than any delay the soak's faults
/// add (300 ms), a slow TMF holding it (800 ms) and the two together.
pub const STUCK_AFTER: Duration = Duration::from_millis(1500);
/// A TMF unanswered this long (a hung one) is ended by a device reset.
pub const TMF_TIMEOUT: Duration = Duration::from_secs(3);
/// TMFs refused in a row before a device reset.
const TMF_REFUSALS: u32 = 8;
/// Pause after a refused TMF before the next.
const TMF_RETRY: Duration = Duration::from_millis(50);
/// Draws for a free range before a slot is left empty for this round.
const DRAWS: u32 = 4;

const LUN0: ScsiAddress = ScsiAddress { target: 0, lun: 0 };

/// What the workload looks like.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// Requests are 1 to this many blocks.
    pub max_blocks: u32,
    pub read_percent: u64,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Write(u64),
    Read,
}

#[derive(Clone, Copy, Debug)]
struct Cmd {
    tag: u64,
    op: Op,
    lba: u64,
    blocks: u32,
    at: Instant,
}

#[derive(Clone, Copy, Debug)]
struct Tmf {
    subtype: u32,
    sent: Instant,
}

/// Why the I/O asks for a device reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Escalation {
    None,
    /// A TMF hung, or TMFs kept being refused: a device reset (or a reconnect) is due.
    DeviceReset,
}

/// What the I/O did, summed over connections.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IoCounts {
    pub writes: u64,
    pub acknowledged: u64,
    /// Writes ended without GOOD: an error status or response, or dropped.
    pub unacknowledged: u64,
    pub reads: u64,
    /// Blocks of reads that completed GOOD, each checked.
    pub blocks_read: u64,
    pub aborts: u64,
    pub lu_resets: u64,
    /// TMFs answered REJECTED or FAILURE.
    pub tmfs_refused: u64,
    pub tmfs_hung: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    #[error("{0}")]
    Mismatch(Box<Mismatch>),
    #[error("LOGICAL UNIT RESET answered FUNCTION COMPLETE with {0} commands that were stuck before it still in flight (the reset must end every one)")]
    SurvivedReset(usize),
}

impl From<Mismatch> for IoError {
    fn from(m: Mismatch) -> Self {
        IoError::Mismatch(Box::new(m))
    }
}

/// One frontend connection and what is in flight on it.
pub struct Connection {
    pub fe: ScsiFrontend,
    /// [request queue][slot]
    cmds: Vec<Vec<Option<Cmd>>>,
    tmf: Option<Tmf>,
    /// Commands stuck when the LU reset in flight was sent: (queue, slot, tag).
    stuck_at_reset: Vec<(usize, u16, u64)>,
    next_tmf: Instant,
    refusals: u32,
    /// Tags of the soak's commands; `ScsiFrontend::execute` takes its own below 2^32.
    next_tag: u64,
    buf: Vec<u8>,
}

impl Connection {
    pub fn new(mut fe: ScsiFrontend, max_blocks: u32) -> Connection {
        let (_, queues) = fe.queues_mut();
        let cmds = queues
            .iter()
            .map(|q| vec![None; usize::from(q.slots())])
            .collect();
        Connection {
            fe,
            cmds,
            tmf: None,
            stuck_at_reset: Vec::new(),
            next_tmf: Instant::now(),
            refusals: 0,
            next_tag: 1 << 32,
            buf: vec![0; max_blocks as usize * BLOCK],
        }
    }

    /// Nothing in flight: no command, no TMF.
    pub fn idle(&self) -> bool {
        self.tmf.is_none() && self.in_flight() == 0
    }

    pub fn in_flight(&self) -> usize {
        self.cmds.iter().flatten().filter(|c| c.is_some()).count()
    }

    /// Fills every free slot of every request queue with a write or a read of a random
    /// range that no other I/O in flight touches.
    pub fn fill(
        &mut self,
        model: &mut Model,
        rng: &mut Rng,
        generation: &mut u64,
        w: Workload,
    ) -> Result<(), IoError> {
        let (_, queues) = self.fe.queues_mut();
        for (qi, q) in queues.iter_mut().enumerate() {
            while let Some(slot) = q.alloc_slot() {
                self.next_tag += 1;
                let Some(cmd) = draw(model, rng, generation, w, self.next_tag) else {
                    q.free_slot(slot);
                    break;
                };
                submit(q, slot, &cmd, &mut self.buf);
                self.cmds[qi][usize::from(slot)] = Some(cmd);
            }
            q.publish_and_kick()?;
        }
        Ok(())
    }

    /// Takes every completion off every queue; true when there was any.
    pub fn poll(&mut self, model: &mut Model, counts: &mut IoCounts) -> Result<bool, IoError> {
        let mut any = false;
        // The control queue first: what a TMF ended is on its used ring before the TMF's
        // answer, so the request queues polled after show all of it.
        let mut answers = Vec::new();
        {
            let (control, _) = self.fe.queues_mut();
            while let Some(c) = control.poll()? {
                control.free_slot(c.slot);
                answers.push(c.tmf_response());
            }
        }
        let mut reset_done = false;
        for response in answers {
            any = true;
            if let Some(tmf) = self.tmf.take() {
                reset_done |= self.tmf_answered(tmf, response, counts);
            }
        }
        let (_, queues) = self.fe.queues_mut();
        for (qi, q) in queues.iter_mut().enumerate() {
            while let Some(c) = q.poll()? {
                any = true;
                let cmd = self.cmds[qi][usize::from(c.slot)]
                    .take()
                    .expect("a used entry names a command in flight (checked by poll)");
                let result = complete(q, &c, &cmd, model, counts, &mut self.buf);
                q.free_slot(c.slot);
                result?;
            }
        }
        let stuck = std::mem::take(&mut self.stuck_at_reset);
        if reset_done {
            let left = stuck
                .iter()
                .filter(|&&(qi, slot, tag)| {
                    self.cmds[qi][usize::from(slot)].is_some_and(|c| c.tag == tag)
                })
                .count();
            if left > 0 {
                return Err(IoError::SurvivedReset(left));
            }
        } else {
            self.stuck_at_reset = stuck;
        }
        Ok(any)
    }

    /// Counts a TMF's answer; true for a LU reset that completed.
    fn tmf_answered(&mut self, tmf: Tmf, response: u32, counts: &mut IoCounts) -> bool {
        if response != scsi::VIRTIO_SCSI_S_FUNCTION_COMPLETE {
            counts.tmfs_refused += 1;
            self.refusals += 1;
            self.next_tmf = Instant::now() + TMF_RETRY;
            self.stuck_at_reset.clear();
            return false;
        }
        self.refusals = 0;
        if tmf.subtype == scsi::VIRTIO_SCSI_T_TMF_ABORT_TASK {
            counts.aborts += 1;
            false
        } else {
            counts.lu_resets += 1;
            true
        }
    }

    /// Sends a LU reset now (unless a TMF is in flight); false if one was in flight.
    pub fn lu_reset(&mut self) -> Result<bool, IoError> {
        if self.tmf.is_some() {
            return Ok(false);
        }
        self.send_tmf(scsi::VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, 0)?;
        Ok(true)
    }

    fn send_tmf(&mut self, subtype: u32, tag: u64) -> Result<(), IoError> {
        let now = Instant::now();
        if subtype == scsi::VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET {
            self.stuck_at_reset = self.stuck(now);
        }
        let (control, _) = self.fe.queues_mut();
        let slot = control.alloc_slot().ok_or(FrontendError::NoFreeSlot {
            queue: control.index(),
        })?;
        control.submit(
            slot,
            &scsi::tmf_req(subtype, LUN0, tag),
            scsi::TMF_RESP_LEN,
            DataDir::None,
        );
        control.publish_and_kick()?;
        self.tmf = Some(Tmf { subtype, sent: now });
        Ok(())
    }

    /// Commands in flight for longer than [`STUCK_AFTER`]: (queue, slot, tag).
    fn stuck(&self, now: Instant) -> Vec<(usize, u16, u64)> {
        let mut v = Vec::new();
        for (qi, slots) in self.cmds.iter().enumerate() {
            for (slot, c) in slots.iter().enumerate() {
                if let Some(c) = c.filter(|c| now.duration_since(c.at) >= STUCK_AFTER) {
                    v.push((qi, slot as u16, c.tag));
                }
            }
        }
        v
    }

    /// The driver's error handling: a stuck command gets ABORT TASK (one in four) or a
    /// LU reset; a TMF that hangs, or TMFs refused again and again, call for a device
    /// reset.
    pub fn escalate(
        &mut self,
        rng: &mut Rng,
        counts: &mut IoCounts,
    ) -> Result<Escalation, IoError> {
        let now = Instant::now();
        if let Some(tmf) = self.tmf {
            if now.duration_since(tmf.sent) >= TMF_TIMEOUT {
                counts.tmfs_hung += 1;
                return Ok(Escalation::DeviceReset);
            }
            return Ok(Escalation::None);
        }
        if self.refusals >= TMF_REFUSALS {
            return Ok(Escalation::DeviceReset);
        }
        if now < self.next_tmf {
            return Ok(Escalation::None);
        }
        let Some(&(_, _, tag)) = self.stuck(now).first() else {
            return Ok(Escalation::None);
        };
        if rng.percent(25) {
            self.send_tmf(scsi::VIRTIO_SCSI_T_TMF_ABORT_TASK, tag)?;
        } else {
            self.send_tmf(scsi::VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, 0)?;
        }
        Ok(Escalation::None)
    }

    /// Forgets everything in flight, as a device reset, a disconnect or the backend's
    /// death does: each write may or may not have happened.
    pub fn drop_all(&mut self, model: &mut Model, counts: &mut IoCounts) {
        for slots in &mut self.cmds {
            for c in slots.iter_mut().filter_map(Option::take) {
                match c.op {
                    Op::Write(generation) => {
                        counts.unacknowledged += 1;
                        model.end_write(c.lba, c.blocks, generation, false);
                    }
                    Op::Read => {
                        let _ = model.end_read(c.lba, c.blocks, None);
                    }
                }
            }
        }
        self.tmf = None;
        self.stuck_at_reset.clear();
        self.refusals = 0;
    }

    /// VHOST_USER_RESET_DEVICE and a fresh set-up of the device.
    pub fn reset_device(
        &mut self,
        model: &mut Model,
        counts: &mut IoCounts,
    ) -> Result<(), IoError> {
        self.drop_all(model, counts);
        self.fe.reset_device()?;
        Ok(())
    }

    /// Waits up to `timeout` for a completion on any queue.
    pub fn wait(&mut self, timeout: Duration) -> Result<bool, IoError> {
        let (control, queues) = self.fe.queues_mut();
        let mut all: Vec<&mut ScsiQueue> =
            std::iter::once(control).chain(queues.iter_mut()).collect();
        Ok(wait_any(&mut all, timeout)?)
    }

    /// One command, alone on queue 0 (nothing else in flight), retried while the LU
    /// reports a unit attention. For checkpoints.
    pub fn execute_quiet(
        &mut self,
        cdb: &[u8],
        dir: DataDir,
        data: &mut [u8],
        what: &'static str,
    ) -> Result<(), IoError> {
        assert_eq!(self.in_flight(), 0, "{what} with I/O in flight");
        for attempt in 0.. {
            let c = self
                .fe
                .execute(0, LUN0, cdb, dir, data, CHECKPOINT_TIMEOUT)?;
            if c.cmd_status() == scsi::SAM_STAT_CHECK_CONDITION && attempt < 4 {
                continue;
            }
            check_good(what, &c)?;
            break;
        }
        Ok(())
    }
}

/// The longest one checkpoint command may take (no faults are active then).
const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(10);

/// A random command over blocks no I/O in flight conflicts with.
fn draw(
    model: &mut Model,
    rng: &mut Rng,
    generation: &mut u64,
    w: Workload,
    tag: u64,
) -> Option<Cmd> {
    for _ in 0..DRAWS {
        let blocks = rng.between(1, u64::from(w.max_blocks)) as u32;
        let lba = rng.below(model.blocks() - u64::from(blocks) + 1);
        if rng.percent(w.read_percent) {
            if model.can_read(lba, blocks) {
                model.begin_read(lba, blocks);
                return Some(Cmd {
                    tag,
                    op: Op::Read,
                    lba,
                    blocks,
                    at: Instant::now(),
                });
            }
        } else if model.can_write(lba, blocks) {
            model.begin_write(lba, blocks);
            *generation += 1;
            return Some(Cmd {
                tag,
                op: Op::Write(*generation),
                lba,
                blocks,
                at: Instant::now(),
            });
        }
    }
    None
}

/// Puts `cmd` in `slot` (stamping a write's data) and queues it; 16-byte CDBs now and
/// then, 10-byte ones mostly, as Linux sends them.
fn submit(q: &mut ScsiQueue, slot: u16, cmd: &Cmd, buf: &mut [u8]) {
    let len = cmd.blocks * BLOCK as u32;
    let (write, dir) = match cmd.op {
        Op::Write(generation) => {
            let data = &mut buf[..len as usize];
            stamp_blocks(data, cmd.lba, generation);
            q.write_data(slot, data);
            (true, DataDir::ToDevice(len))
        }
        Op::Read => (false, DataDir::FromDevice(len)),
    };
    let cdb = if cmd.tag.is_multiple_of(8) {
        scsi::rw16(write, cmd.lba, cmd.blocks)
    } else {
        scsi::rw(write, cmd.lba, cmd.blocks)
    };
    q.submit(
        slot,
        &scsi::cmd_req(LUN0, cmd.tag, &cdb),
        scsi::CMD_RESP_LEN,
        dir,
    );
}

/// Feeds one completion to the model: GOOD (with nothing left untransferred) is an
/// acknowledged write or a read to check; anything else leaves a write undecided.
fn complete(
    q: &ScsiQueue,
    c: &Completion,
    cmd: &Cmd,
    model: &mut Model,
    counts: &mut IoCounts,
    buf: &mut [u8],
) -> Result<(), IoError> {
    let good = c.cmd_response() == scsi::VIRTIO_SCSI_S_OK
        && c.cmd_status() == scsi::SAM_STAT_GOOD
        && c.cmd_resid() == 0;
    match cmd.op {
        Op::Write(generation) => {
            counts.writes += 1;
            if good {
                counts.acknowledged += 1;
            } else {
                counts.unacknowledged += 1;
            }
            model.end_write(cmd.lba, cmd.blocks, generation, good);
            Ok(())
        }
        Op::Read => {
            counts.reads += 1;
            if !good {
                return Ok(model.end_read(cmd.lba, cmd.blocks, None)?);
            }
            let data = &mut buf[..cmd.blocks as usize * BLOCK];
            q.read_data(c.slot, data);
            counts.blocks_read += u64::from(cmd.blocks);
            Ok(model.end_read(cmd.lba, cmd.blocks, Some(data))?)
        }
    }
}
