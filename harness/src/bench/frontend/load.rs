//! The load generator: one thread per request queue, each keeping `queue_depth` READ
//! and WRITE commands (10-byte CDBs where they fit, as Linux sends them) in flight for a
//! while and timing each one from its submission (just before the kick) to its used-ring
//! entry.

use std::time::{Duration, Instant};

use super::queue::{Completion, DataDir, ScsiQueue};
use super::scsi::{self, ScsiAddress, CMD_RESP_LEN};
use super::{FrontendError, ScsiFrontend, SIGNAL_CHECK};
use crate::launch::signals;
use guest_miniport::latency::Histogram;

/// No completion for this long means the backend stalled (`bench --stall-timeout`).
pub const DEFAULT_STALL: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pattern {
    Random,
    Sequential,
}

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadSpec {
    pub lun: ScsiAddress,
    /// Bytes per request; a multiple of the LUN's block size.
    pub block_bytes: u32,
    /// Percent of requests that are reads (0..=100).
    pub read_percent: u8,
    pub pattern: Pattern,
    pub duration: Duration,
    /// Seed of the LBA and read/write draws.
    pub seed: u64,
    /// A queue with requests in flight and no completion for this long has stalled.
    /// Interrupts without a completion (spurious ones) do not count as progress.
    pub stall: Duration,
}

/// Counters of one queue or of all of them.
#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    pub reads: u64,
    pub writes: u64,
    pub bytes: u64,
    /// Completions that were not VIRTIO_SCSI_S_OK with GOOD status.
    pub errors: u64,
    /// The first of those: LBA, response, status and sense, for the error message.
    pub first_error: Option<String>,
    pub kicks: u64,
    pub waits: u64,
    /// Used-buffer notifications received.
    pub calls: u64,
    pub elapsed: Duration,
    pub latency: Histogram,
}

impl LoadResult {
    pub fn ios(&self) -> u64 {
        self.reads + self.writes
    }
    pub fn iops(&self) -> f64 {
        self.ios() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    pub fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn merge(&mut self, o: &LoadResult) {
        self.reads += o.reads;
        self.writes += o.writes;
        self.bytes += o.bytes;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.kicks += o.kicks;
        self.waits += o.waits;
        self.calls += o.calls;
        self.elapsed = self.elapsed.max(o.elapsed);
        self.latency.merge(&o.latency);
    }
}

/// xorshift64*: cheap, deterministic draws with no allocation (the load's and the soak's).
#[derive(Clone, Copy, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in 0..n (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }
    /// Uniform in lo..=hi.
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    /// True with probability `percent`/100.
    pub fn percent(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// Where one queue's requests go: `units` request-sized units from `first_unit` on.
#[derive(Clone, Copy, Debug)]
struct Region {
    first_unit: u64,
    units: u64,
    blocks_per_unit: u32,
}

/// Runs `spec` on every request queue of `fe` at once and returns the sum.
pub fn run_load(fe: &mut ScsiFrontend, spec: &LoadSpec) -> Result<LoadResult, FrontendError> {
    if spec.read_percent > 100 {
        return Err(FrontendError::BadConfig(format!(
            "read percentage {} above 100",
            spec.read_percent
        )));
    }
    let (blocks, block_size) = fe.read_capacity(spec.lun)?;
    if block_size == 0 || spec.block_bytes == 0 || !spec.block_bytes.is_multiple_of(block_size) {
        return Err(FrontendError::BadConfig(format!(
            "request size {} is not a multiple of the LUN's block size {block_size}",
            spec.block_bytes
        )));
    }
    let blocks_per_unit = spec.block_bytes / block_size;
    let units = blocks / u64::from(blocks_per_unit);
    let queues = fe.take_request_queues();
    let n = queues.len() as u64;
    let problem = if queues.iter().any(|q| q.data_bytes() < spec.block_bytes) {
        Some(format!(
            "request size {} above the frontend's buffers",
            spec.block_bytes
        ))
    } else if units < n {
        Some(format!(
            "LUN of {blocks} blocks too small for {n} queues of {}-byte requests",
            spec.block_bytes
        ))
    } else {
        None
    };
    if let Some(p) = problem {
        fe.put_request_queues(queues);
        return Err(FrontendError::BadConfig(p));
    }
    // Sequential streams get a share each, so queues do not read the same blocks.
    let share = units / n;
    let tag_base = fe.next_tag();
    let spec = *spec;
    let handles: Vec<_> = queues
        .into_iter()
        .enumerate()
        .map(|(i, q)| {
            let region = match spec.pattern {
                Pattern::Random => Region {
                    first_unit: 0,
                    units,
                    blocks_per_unit,
                },
                Pattern::Sequential => Region {
                    first_unit: share * i as u64,
                    units: share,
                    blocks_per_unit,
                },
            };
            // Tags stay unique across queues: the queue number in the top bits.
            let tags = tag_base | ((i as u64 + 1) << 48);
            let seed = spec.seed ^ (i as u64 + 1);
            std::thread::Builder::new()
                .name(format!("load-q{i}"))
                .spawn(move || queue_load(q, spec, region, tags, seed))
                .expect("spawn load thread")
        })
        .collect();
    let mut total = LoadResult::default();
    let mut back = Vec::new();
    let mut first_err = None;
    for h in handles {
        let (q, r) = h.join().expect("load thread panicked");
        back.push(q);
        match r {
            Ok(r) => total.merge(&r),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    fe.put_request_queues(back);
    match first_err {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

fn queue_load(
    mut q: ScsiQueue,
    spec: LoadSpec,
    region: Region,
    tag_base: u64,
    seed: u64,
) -> (ScsiQueue, Result<LoadResult, FrontendError>) {
    let r = queue_load_inner(&mut q, &spec, region, tag_base, seed);
    (q, r)
}

/// One queue's submission state, kept apart so that the completion loop can read it.
struct Submitter {
    spec: LoadSpec,
    region: Region,
    rng: Rng,
    tag: u64,
    next_seq: u64,
    req: [u8; scsi::CMD_REQ_LEN],
    started: Vec<Instant>,
    is_write: Vec<bool>,
    lba: Vec<u64>,
}

impl Submitter {
    fn submit(&mut self, q: &mut ScsiQueue, slot: u16) {
        let unit = match self.spec.pattern {
            Pattern::Random => self.rng.below(self.region.units),
            Pattern::Sequential => {
                let u = self.next_seq % self.region.units;
                self.next_seq += 1;
                u
            }
        };
        let lba = (self.region.first_unit + unit) * u64::from(self.region.blocks_per_unit);
        let write = self.spec.read_percent < 100
            && self.rng.below(100) >= u64::from(self.spec.read_percent);
        scsi::set_cmd(
            &mut self.req,
            self.tag,
            &scsi::rw(write, lba, self.region.blocks_per_unit),
        );
        self.tag += 1;
        let bytes = self.spec.block_bytes;
        let dir = if write {
            DataDir::ToDevice(bytes)
        } else {
            DataDir::FromDevice(bytes)
        };
        q.submit(slot, &self.req, CMD_RESP_LEN, dir);
        self.started[usize::from(slot)] = Instant::now();
        self.is_write[usize::from(slot)] = write;
        self.lba[usize::from(slot)] = lba;
    }
}

/// One failed completion in words: what was asked, and the response, status and sense.
fn describe_failure(q: &ScsiQueue, c: &Completion, write: bool, lba: u64, blocks: u32) -> String {
    let mut resp = [0u8; CMD_RESP_LEN as usize];
    q.read_response(c.slot, &mut resp);
    let sense_len = (c.cmd_sense_len() as usize).min(resp.len() - 12);
    let sense = &resp[scsi::RESP_SENSE..scsi::RESP_SENSE + sense_len];
    let (key, asc, ascq) = match sense.first().map(|b| b & 0x7f) {
        Some(0x72 | 0x73) if sense.len() >= 4 => (sense[1] & 0xf, sense[2], sense[3]),
        Some(0x70 | 0x71) if sense.len() >= 14 => (sense[2] & 0xf, sense[12], sense[13]),
        _ => (0, 0, 0),
    };
    format!(
        "queue {}: {} of {blocks} blocks at lba {lba}: response {}, status {:#04x}, residual {}, sense key {key:#x} asc {asc:#04x} ascq {ascq:#04x} ({sense_len} sense bytes)",
        q.index(),
        if write { "WRITE" } else { "READ" },
        c.cmd_response(),
        c.cmd_status(),
        c.cmd_resid(),
    )
}

fn queue_load_inner(
    q: &mut ScsiQueue,
    spec: &LoadSpec,
    region: Region,
    tag: u64,
    seed: u64,
) -> Result<LoadResult, FrontendError> {
    let mut res = LoadResult::default();
    // Written data is whatever pattern the buffers hold: fill them once.
    for s in 0..q.slots() {
        q.fill_data(s, (s as u8) ^ 0x5a);
    }
    let slots = usize::from(q.slots());
    let mut sub = Submitter {
        spec: *spec,
        region,
        rng: Rng::new(seed),
        tag,
        next_seq: 0,
        req: scsi::cmd_req(spec.lun, 0, &[]),
        started: vec![Instant::now(); slots],
        is_write: vec![false; slots],
        lba: vec![0; slots],
    };
    let bytes = spec.block_bytes;
    q.drain_calls();
    let (kicks0, waits0, calls0) = (q.kicks, q.waits, q.calls);
    let start = Instant::now();
    let end = start + spec.duration;
    let mut stopping = false;
    // The stall clock runs from the last completion, not from the last interrupt: a
    // stream of spurious interrupts must not keep a stalled queue alive for ever.
    let mut last_completion = start;

    while let Some(slot) = q.alloc_slot() {
        sub.submit(q, slot);
    }
    q.publish_and_kick()?;
    loop {
        if signals::interrupted() {
            return Err(FrontendError::Interrupted);
        }
        let mut any = false;
        while let Some(c) = q.poll()? {
            any = true;
            let now = Instant::now();
            last_completion = now;
            let s = usize::from(c.slot);
            res.latency
                .record(now.duration_since(sub.started[s]).as_nanos() as u64);
            if c.cmd_response() == scsi::VIRTIO_SCSI_S_OK && c.cmd_status() == scsi::SAM_STAT_GOOD {
                if sub.is_write[s] {
                    res.writes += 1;
                } else {
                    res.reads += 1;
                }
                res.bytes += u64::from(bytes);
            } else {
                res.errors += 1;
                if res.first_error.is_none() {
                    res.first_error = Some(describe_failure(
                        q,
                        &c,
                        sub.is_write[s],
                        sub.lba[s],
                        sub.region.blocks_per_unit,
                    ));
                }
            }
            if !stopping && now >= end {
                stopping = true;
            }
            if stopping {
                q.free_slot(c.slot);
            } else {
                sub.submit(q, c.slot);
            }
        }
        if any {
            q.publish_and_kick()?;
        }
        if stopping && q.in_flight() == 0 {
            break;
        }
        if !any {
            // The ring was just polled: a completion that landed without a call counts.
            let idle = last_completion.elapsed();
            if idle >= spec.stall {
                return Err(FrontendError::Timeout {
                    queue: q.index(),
                    timeout: spec.stall,
                    ring: q.ring_state(),
                });
            }
            // In slices, so that a signal ends the load promptly.
            q.wait((spec.stall - idle).min(SIGNAL_CHECK))?;
        }
    }
    res.elapsed = start.elapsed();
    res.kicks = q.kicks - kicks0;
    res.waits = q.waits - waits0;
    q.drain_calls();
    res.calls = q.calls - calls0;
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_below_stays_in_range_and_spreads() {
        let mut r = Rng::new(7);
        let mut seen = [0u32; 10];
        for _ in 0..10_000 {
            let v = r.below(10);
            assert!(v < 10);
            seen[v as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
    }
}
