//! Request parsing: descriptor chains laid out from the input (addresses inside, across
//! and outside guest memory, either direction, indirect tables) go through the request
//! and control queue paths twice:
//!
//! 1. each chain alone through `serve_command` / `process_control_chain`, checking that
//!    nothing outside a writable descriptor changes, that the used length fits the chain,
//!    that the response written is the one reported and is valid, and that a malformed
//!    chain gets exactly one warning (and a well-formed one none);
//! 2. all chains, one kick each, through `VhostUserBackend::handle_event` of a device with
//!    virtio-queue vrings, with or without a fault engine (lost, delayed, corrupted and
//!    failed requests, slow, hung and failed TMFs, events): every chain made available is
//!    completed once or held, each used entry names a chain made available, fits it and
//!    carries a valid response; then the timer fires and a device reset drops what is held.
//!
//! Input: `[mode, faults, chains, chain..., payload]`. `mode`: bit 0 powers the LUs on (a
//! unit attention is pending), bit 1 enables EVENT_IDX, bit 2 leaves an event buffer.
//! `faults`: each nibble picks a fault of `FAULTS` (0: none; both 0: no engine).
//! `chains`: 1 + chains % 4 chains follow, each `[sel, desc * (1 + sel % 8)]` with
//! `sel & 8` for the control queue. A descriptor is 8 bytes
//! `[kind, flags, off_lo, off_hi, len_lo, len_hi, x, y]` (see `descriptor`). The payload is
//! copied to DATA_BASE (request headers, CDBs, data-out, indirect tables).
#![no_main]

use std::sync::{Arc, Mutex, OnceLock};

use flakyhba_backend::faults::{FaultEngine, FaultSpec, Plan};
use flakyhba_backend::vhu_scsi::{process_control_chain, serve_command, Disposition};
use flakyhba_backend::virtio::{VIRTIO_SCSI_CDB_SIZE, VIRTIO_SCSI_S_FAILURE, VIRTIO_SCSI_S_OK};
use flakyhba_fuzz::*;
use libfuzzer_sys::fuzz_target;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::ByteValued;

/// Kind 1 addresses start here: the end of region 0, the hole, region 1 and past it.
const EDGE_BASE: u64 = 0xc000;
const MAX_CHAINS: usize = 4;
const MAX_DESCS: usize = 8;
const DESC_BYTES: usize = 8;

/// Faults a nibble of the input picks (1-based). Time-driven ones fire at the first tick.
const FAULTS: [&str; 15] = [
    "lose",
    "drop-interrupt:every=1,request=any",
    "status:status=check-condition,sense_key=3,asc=0x11",
    "status:status=short-transfer,residual=100",
    "status:status=overrun",
    "status:status=busy",
    "corrupt:bytes=3",
    "delay:delay_ms=60000,request=any",
    "fail-tmf:response=failed",
    "hang-tmf",
    "slow-tmf:tmf=lu-reset,duration_ms=60000,new_commands=hold",
    "slow-tmf:tmf=abort-task,duration_ms=60000",
    "event:event=transport-reset,reason=removed,at_ms=0",
    "spurious-interrupt:queue=control,at_ms=0,burst=2",
    "status:status=reset,every=2",
];

/// FAULTS, parsed once.
fn fault_specs() -> &'static [FaultSpec] {
    static SPECS: OnceLock<Vec<FaultSpec>> = OnceLock::new();
    SPECS.get_or_init(|| {
        FAULTS
            .iter()
            .map(|text| FaultSpec::from_shorthand(text, true).expect("FAULTS are valid"))
            .collect()
    })
}

fn engine(faults: u8) -> Option<Arc<Mutex<FaultEngine>>> {
    let mut plan = Plan {
        allow_corruption: true,
        ..Plan::default()
    };
    for nibble in [faults & 0xf, faults >> 4] {
        if nibble != 0 {
            let spec = fault_specs()[usize::from(nibble) - 1].clone();
            plan.push(spec).expect("corruption allowed");
        }
    }
    (!plan.is_empty()).then(|| Arc::new(Mutex::new(FaultEngine::new(plan))))
}

fn descriptor(d: &[u8]) -> RawDescriptor {
    let off = u16::from_le_bytes([d[2], d[3]]);
    let len16 = u16::from_le_bytes([d[4], d[5]]);
    let wide = u32::from_le_bytes([d[4], d[5], d[6], d[7]]);
    let addr = match d[0] & 3 {
        0 => DATA_BASE + u64::from(off),
        1 => EDGE_BASE + u64::from(off),
        2 => u64::from(u32::from_le_bytes([d[2], d[3], d[6], d[7]])),
        _ => u64::MAX - u64::from(off),
    };
    // Bit 2 of the kind: a length from four bytes (huge ones included).
    let len = if d[0] & 4 != 0 {
        wide
    } else {
        u32::from(len16)
    };
    // WRITE (2) and INDIRECT (4) come from the input; NEXT is set when the chain is linked.
    let flags = u16::from(d[1]);
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// One chain alone, through the chain handler of its queue.
fn serve_alone(
    target: &flakyhba_backend::scsi::Target,
    kind: QueueKind,
    descs: &[RawDescriptor],
    payload: &[u8],
) {
    let mem = guest_memory(payload);
    let vq = MockSplitQueue::new(&mem, QUEUE_SIZE);
    let Ok(chain) = vq.build_desc_chain(descs) else {
        return;
    };
    let info = ChainInfo::of(chain.clone(), descs);
    let wild = ChainInfo::rewrites_queues(std::slice::from_ref(&info));
    let disjoint = ChainInfo::disjoint(std::slice::from_ref(&info));
    let before = snapshot(&mem);
    take_warnings();
    let (used, reported) = match kind {
        QueueKind::Request => {
            let served = serve_command(
                target,
                &mem,
                chain,
                Disposition::EXECUTE,
                VIRTIO_SCSI_CDB_SIZE,
                None,
            );
            (served.used, served.resp)
        }
        QueueKind::Control => (process_control_chain(target, &mem, chain), None),
    };
    let warnings = take_warnings();
    if wild {
        recycle(before);
        return;
    }
    assert!(
        u64::from(used) <= info.writable_bytes,
        "used length {used} > {} writable bytes",
        info.writable_bytes
    );
    let after = snapshot(&mem);
    assert_changes_within(&before, &after, &info.writable);
    recycle(before);
    recycle(after);
    if used == 0 {
        assert_eq!(warnings, 1, "a chain without a response: one warning");
        assert!(reported.is_none());
        return;
    }
    match kind {
        QueueKind::Request => {
            let resp = reported.expect("a response with a used length");
            assert!(
                used as usize >= CMD_RESP_LEN,
                "used length {used} cuts the response"
            );
            // A malformed chain (FAILURE) gets exactly one log line; so may a well-formed
            // chain the driver got wrong in a field (a LUN in another format: BAD_TARGET;
            // a CDB longer than the CDB area: CHECK CONDITION), but never more than one,
            // and a command that succeeded none.
            let failed = resp.response == VIRTIO_SCSI_S_FAILURE;
            let good = resp.response == VIRTIO_SCSI_S_OK && resp.status == 0;
            assert!(
                warnings <= 1 && (!failed || warnings == 1) && (!good || warnings == 0),
                "{warnings} warnings for response {} status {}",
                resp.response,
                resp.status
            );
            if disjoint {
                let r = info
                    .read_writable(&mem, CMD_RESP_LEN)
                    .expect("response readable");
                assert_eq!(
                    r,
                    resp.as_slice(),
                    "the response written is not the one reported"
                );
                check_cmd_response(&r, &info);
            }
        }
        QueueKind::Control => {
            assert!(warnings <= 1, "{warnings} warnings for one control request");
            if disjoint {
                let r = info
                    .read_writable(&mem, used as usize)
                    .expect("response readable");
                check_control_response(used, &r);
                if r[0] == VIRTIO_SCSI_S_FAILURE && used == 1 {
                    assert_eq!(warnings, 1, "a malformed control request: one warning");
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    init_logging();
    let [mode, faults, count, tail @ ..] = data else {
        return;
    };
    let mut rest: &[u8] = tail;
    let mut chains = Vec::new();
    for _ in 0..1 + usize::from(*count) % MAX_CHAINS {
        let Some((&sel, tail)) = rest.split_first() else {
            return;
        };
        let n = 1 + usize::from(sel) % MAX_DESCS;
        if tail.len() < n * DESC_BYTES {
            return;
        }
        let (table, tail) = tail.split_at(n * DESC_BYTES);
        let kind = if sel & 8 != 0 {
            QueueKind::Control
        } else {
            QueueKind::Request
        };
        chains.push((
            kind,
            table
                .chunks_exact(DESC_BYTES)
                .map(descriptor)
                .collect::<Vec<_>>(),
        ));
        rest = tail;
    }
    let payload = rest;
    let opts = DeviceOptions {
        power_on: mode & 1 != 0,
        event_idx: mode & 2 != 0,
        event_buffer: mode & 4 != 0,
    };

    let alone = target(opts.power_on);
    for (kind, descs) in &chains {
        serve_alone(&alone, *kind, descs, payload);
    }

    let Some(mut dev) = Device::new(
        payload,
        engine(*faults),
        Arc::new(target(false)),
        opts,
        &chains,
    ) else {
        return;
    };
    for (kind, _) in &chains {
        assert!(dev.kick(*kind), "a chain left to kick");
    }
    dev.tick();
    dev.reset();
});
