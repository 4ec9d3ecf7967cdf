//! Requests the device holds instead of completing at once: delayed or held commands, lost
//! commands (until an abort or a reset), slow and hung TMFs. One table per virtqueue.

use std::time::Duration;

use crate::faults::Completion;

use super::ring_epoch::Popped;
use super::QUEUE_SIZE;

/// What to do with a held request when it is due (or cancelled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// Execute the command (or answer with the decided status) when due.
    Command {
        completion: Completion,
        drop_interrupt: bool,
    },
    /// A lost command: never due; only an abort, a LU/nexus reset or a device reset ends it.
    Lost { drop_interrupt: bool },
    /// A TMF whose effects are done: answer `response` when due (never, when hung).
    Tmf { response: u8, drop_interrupt: bool },
}

impl Work {
    pub fn drop_interrupt(&self) -> bool {
        match *self {
            Work::Command { drop_interrupt, .. }
            | Work::Lost { drop_interrupt }
            | Work::Tmf { drop_interrupt, .. } => drop_interrupt,
        }
    }
}

/// One held request. `C` is the descriptor chain, kept so that the request can be served
/// (or answered ABORTED/RESET) later.
#[derive(Debug)]
pub struct InflightEntry<C> {
    /// The chain's head and the ring epoch it was popped in.
    pub popped: Popped,
    /// The virtio-scsi request `id` (the tag ABORT TASK names).
    pub tag: u64,
    pub target: u8,
    pub lun: u16,
    /// Time since the backend's epoch; `None` is never (lost command, hung TMF).
    pub due: Option<Duration>,
    pub work: Work,
    pub chain: C,
}

/// The held requests of one virtqueue. Room for a full queue is reserved on first use, so
/// holding a request never allocates afterwards (a head cannot be held twice).
#[derive(Debug)]
pub struct InflightTable<C> {
    entries: Vec<InflightEntry<C>>,
}

impl<C> Default for InflightTable<C> {
    fn default() -> Self {
        InflightTable {
            entries: Vec::new(),
        }
    }
}

impl<C> InflightTable<C> {
    pub fn insert(&mut self, entry: InflightEntry<C>) {
        if self.entries.capacity() == 0 {
            self.entries.reserve_exact(QUEUE_SIZE);
        }
        self.entries.push(entry);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn earliest_due(&self) -> Option<Duration> {
        self.entries.iter().filter_map(|e| e.due).min()
    }

    /// The earliest entry due at `now`, removed.
    pub fn take_due(&mut self, now: Duration) -> Option<InflightEntry<C>> {
        let pos = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.due.is_some_and(|d| d <= now))
            .min_by_key(|(_, e)| e.due)
            .map(|(i, _)| i)?;
        Some(self.entries.swap_remove(pos))
    }

    /// The request with this tag on this I_T_L nexus, removed.
    pub fn take_tag(&mut self, target: u8, lun: u16, tag: u64) -> Option<InflightEntry<C>> {
        let pos = self
            .entries
            .iter()
            .position(|e| e.tag == tag && e.target == target && e.lun == lun)?;
        Some(self.entries.swap_remove(pos))
    }

    /// One request of the LU (or, with `lun = None`, of the whole target), removed.
    pub fn take_matching(&mut self, target: u8, lun: Option<u16>) -> Option<InflightEntry<C>> {
        let pos = self
            .entries
            .iter()
            .position(|e| e.target == target && lun.is_none_or(|l| e.lun == l))?;
        Some(self.entries.swap_remove(pos))
    }

    pub fn has_tag(&self, target: u8, lun: u16, tag: u64) -> bool {
        self.entries
            .iter()
            .any(|e| e.tag == tag && e.target == target && e.lun == lun)
    }

    pub fn has_lun(&self, target: u8, lun: u16) -> bool {
        self.entries
            .iter()
            .any(|e| e.target == target && e.lun == lun)
    }

    /// Drops every entry without answering it (device reset); returns how many.
    pub fn clear(&mut self) -> usize {
        let n = self.entries.len();
        self.entries.clear();
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vhu_scsi::ring_epoch::RingEpoch;

    fn entry(head: u16, tag: u64, lun: u16, due: Option<u64>) -> InflightEntry<()> {
        InflightEntry {
            popped: RingEpoch::new(0).popped_now(head),
            tag,
            target: 0,
            lun,
            due: due.map(Duration::from_millis),
            work: Work::Lost {
                drop_interrupt: false,
            },
            chain: (),
        }
    }

    #[test]
    fn due_entries_come_out_earliest_first() {
        let mut t = InflightTable::default();
        t.insert(entry(0, 10, 0, Some(30)));
        t.insert(entry(1, 11, 0, None));
        t.insert(entry(2, 12, 0, Some(10)));
        assert_eq!(t.earliest_due(), Some(Duration::from_millis(10)));
        assert!(t.take_due(Duration::from_millis(5)).is_none());
        assert_eq!(
            t.take_due(Duration::from_millis(40)).unwrap().popped.head(),
            2
        );
        assert_eq!(
            t.take_due(Duration::from_millis(40)).unwrap().popped.head(),
            0
        );
        assert!(
            t.take_due(Duration::from_secs(1000)).is_none(),
            "lost stays"
        );
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn tags_and_luns_select_entries() {
        let mut t = InflightTable::default();
        t.insert(entry(0, 7, 0, None));
        t.insert(entry(1, 7, 1, None));
        t.insert(entry(2, 8, 1, None));
        assert!(t.has_tag(0, 1, 7));
        assert!(t.take_tag(0, 2, 7).is_none());
        assert_eq!(t.take_tag(0, 1, 7).unwrap().popped.head(), 1);
        assert!(!t.has_tag(0, 1, 7));
        assert_eq!(t.take_matching(0, Some(1)).unwrap().popped.head(), 2);
        assert!(t.take_matching(0, Some(1)).is_none());
        assert!(t.has_lun(0, 0));
        assert_eq!(t.take_matching(0, None).unwrap().popped.head(), 0);
        assert!(t.is_empty());
        t.insert(entry(3, 1, 0, Some(1)));
        assert_eq!(t.clear(), 1);
        assert!(t.entries.capacity() >= QUEUE_SIZE, "room reserved once");
    }
}
