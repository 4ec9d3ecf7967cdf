#!/usr/bin/env python3
"""Writes the seed corpora (small, valid inputs) next to this script. Re-run after
changing an input layout; the layouts are described at the top of each fuzz target."""
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    os.makedirs(os.path.join(HERE, target), exist_ok=True)
    with open(os.path.join(HERE, target, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def lun(n, target=0):
    return bytes([1, target, 0x40 | (n >> 8), n & 0xFF, 0, 0, 0, 0])


def desc(off, length, writable=False, kind=0, indirect=False):
    flags = (2 if writable else 0) | (4 if indirect else 0)
    return struct.pack("<BBHHH", kind, flags, off, length, 0)


def cmd_req(cdb, n=0):
    return lun(n) + struct.pack("<QBBB", 1, 0, 0, 0) + cdb.ljust(32, b"\0")


# ---- request: [mode, faults, chains - 1, (sel, descs...)..., payload at DATA_BASE] ----
RESP = 108
HDR = 51


def chain(descs, control=False):
    return bytes([(len(descs) - 1) | (8 if control else 0)]) + b"".join(descs)


def request(name, chains, payload, mode=0, faults=0):
    put("request", name, bytes([mode, faults, len(chains) - 1]) + b"".join(chains) + payload)


def page(*chunks):
    """Payload with chunk i at offset 0x1000 * i (0: the header)."""
    out = bytearray()
    for i, c in enumerate(chunks):
        out[len(out):] = b"\0" * (0x1000 * i - len(out))
        out += c
    return bytes(out)


# Fault numbers: the 1-based index in FAULTS of fuzz_targets/request.rs.
LOSE, DROP_IRQ, CHECK, SHORT, OVERRUN, BUSY, CORRUPT, DELAY = range(1, 9)
FAIL_TMF, HANG_TMF, SLOW_RESET_HOLD, SLOW_ABORT, EVENT, SPURIOUS, RESET_EVERY_2 = range(9, 16)
ABORT_TASK, NEXUS_RESET, LU_RESET = 0, 4, 5


def tmf(subtype, n=0, tag=1):
    return struct.pack("<II", 0, subtype) + lun(n) + struct.pack("<Q", tag)


inquiry = bytes([0x12, 0, 0, 0, 96, 0])
read10 = bytes([0x28, 0, 0, 0, 0, 2, 0, 0, 1, 0])
write10 = bytes([0x2A, 0, 0, 0, 0, 3, 0, 0, 1, 0])
# Header at +0, response at +0x1000, data-in at +0x2000 (offsets from DATA_BASE).
read_chain = chain([desc(0, HDR), desc(0x1000, RESP, True), desc(0x2000, 512, True)])
inquiry_chain = chain([desc(0, HDR), desc(0x1000, RESP, True), desc(0x2000, 96, True)])
write_chain = chain([desc(0, HDR), desc(0x2000, 512), desc(0x1000, RESP, True)])
tur_chain = chain([desc(0, HDR), desc(0x1000, RESP, True)])
# A TMF at +0x3000, its response at +0x4000.
tmf_chain = chain([desc(0x3000, 24), desc(0x4000, 1, True)], control=True)

request("inquiry", [inquiry_chain], cmd_req(inquiry))
request("read10", [read_chain], cmd_req(read10))
request("write10", [write_chain], page(cmd_req(write10), b"", b"\xa5" * 512))
request("tur_ua", [tur_chain], cmd_req(bytes(6)), mode=1)
# Data-in split over two descriptors, the second crossing the end of region 0.
request("read10_split",
        [chain([desc(0, HDR), desc(0x1000, RESP, True), desc(0x2000, 100, True),
                desc(0x3F00, 412, True, kind=1)])],
        cmd_req(bytes([0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0])))
# An indirect table at DATA_BASE + 0x3000 with header, response and data-in.
table = b"".join(struct.pack("<QIHH", a, l, f, nx) for a, l, f, nx in [
    (0x1000, HDR, 1, 1), (0x2000, RESP, 3, 2), (0x5000, 96, 2, 0)])
request("indirect_inquiry", [chain([desc(0x3000, len(table), indirect=True)])],
        page(cmd_req(inquiry), b"", b"", table))
request("tmf_lu_reset", [tmf_chain], page(b"", b"", b"", tmf(LU_RESET)))
an = struct.pack("<I", 1) + lun(0) + struct.pack("<I", 0x7E)
request("an_query", [chain([desc(0x3000, len(an)), desc(0x4000, 5, True)], control=True)],
        page(b"", b"", b"", an))
# With faults: a lost READ(10) that ABORT TASK or a LU reset ends; slow, hung and failed
# TMFs; corrupted, short and failed transfers; interrupts, events and delays.
request("lose_then_abort", [read_chain, tmf_chain], page(cmd_req(read10), b"", b"", tmf(ABORT_TASK)),
        faults=LOSE)
request("lose_then_lu_reset", [read_chain, tmf_chain], page(cmd_req(read10), b"", b"", tmf(LU_RESET)),
        faults=LOSE)
request("hang_tmf_then_read", [tmf_chain, read_chain], page(cmd_req(read10), b"", b"", tmf(LU_RESET)),
        faults=HANG_TMF)
request("slow_reset_holds_read", [tmf_chain, read_chain],
        page(cmd_req(read10), b"", b"", tmf(LU_RESET)), faults=SLOW_RESET_HOLD)
request("slow_abort_of_lost", [read_chain, tmf_chain], page(cmd_req(read10), b"", b"", tmf(ABORT_TASK)),
        faults=LOSE | SLOW_ABORT << 4)
request("fail_tmf", [tmf_chain], page(b"", b"", b"", tmf(NEXUS_RESET)), faults=FAIL_TMF)
request("corrupt_read", [read_chain], cmd_req(read10), faults=CORRUPT)
request("corrupt_write", [write_chain], page(cmd_req(write10), b"", b"\x5a" * 512), faults=CORRUPT)
request("check_condition", [inquiry_chain], cmd_req(inquiry), faults=CHECK)
request("short_read", [read_chain], cmd_req(read10), faults=SHORT)
request("overrun_busy", [read_chain, tur_chain], cmd_req(read10), faults=OVERRUN | BUSY << 4)
request("drop_irq_event_idx", [tur_chain, tur_chain], cmd_req(bytes(6)), mode=2, faults=DROP_IRQ)
request("event_posted", [tur_chain], cmd_req(bytes(6)), mode=4, faults=EVENT)
request("spurious_irq", [tmf_chain], page(b"", b"", b"", tmf(LU_RESET)), faults=SPURIOUS)
# Regression (fixed): INQUIRY data written over the request queue's avail ring (kind 2, an
# absolute address) leaves the avail index a ring ahead; with EVENT_IDX the worker spun.
request("inquiry_over_avail_ring",
        [chain([desc(0, HDR), desc(0x1000, RESP, True), desc(0x200, 96, True, kind=2)])],
        cmd_req(inquiry), mode=2)
request("delay_then_reset", [read_chain, read_chain], cmd_req(read10), faults=DELAY | RESET_EVERY_2 << 4)

# ---- cdb: [addr, cap_lo, cap_hi, cdb_len - 1, cdb..., data_out...] ----


def cdb(name, c, cap=512, addr=0, data_out=b""):
    put("cdb", name, bytes([addr]) + struct.pack("<H", cap) + bytes([len(c) - 1]) + c + data_out)


cdb("inquiry", bytes([0x12, 0, 0, 0, 96, 0]))
cdb("inquiry_vpd83", bytes([0x12, 1, 0x83, 0, 255, 0]))
cdb("inquiry_vpd00_absent", bytes([0x12, 1, 0, 0, 64, 0]), addr=2)
cdb("report_luns", bytes([0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]))
cdb("mode_sense6_all", bytes([0x1A, 0, 0x3F, 0, 255, 0]))
cdb("mode_sense10_all", bytes([0x5A, 0, 0x3F, 0, 0, 0, 0, 1, 0, 0]))
cdb("read_capacity16", bytes([0x9E, 0x10] + [0] * 8 + [0, 0, 0, 32, 0, 0]))
cdb("report_opcodes", bytes([0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0]), cap=1024)
cdb("report_one_opcode", bytes([0xA3, 0x0C, 1, 0x28, 0, 0, 0, 0, 0, 64, 0, 0]))
cdb("request_sense_ua", bytes([0x03, 0, 0, 0, 252, 0]), addr=8)
cdb("read10_4k", bytes([0x28, 0, 0, 0, 0, 1, 0, 0, 1, 0]), cap=4096, addr=1)
cdb("write10", bytes([0x2A, 0, 0, 0, 0, 4, 0, 0, 1, 0]), cap=0, data_out=b"\x5a" * 512)
cdb("write_same10", bytes([0x41, 0, 0, 0, 0, 0, 0, 0, 8, 0]), cap=0, data_out=b"\x11" * 512)
unmap = struct.pack(">HH4x", 22, 16) + struct.pack(">QI4x", 8, 4)
cdb("unmap", bytes([0x42, 0, 0, 0, 0, 0, 0, 0, len(unmap), 0]), cap=0, data_out=unmap)
cdb("start_stop", bytes([0x1B, 0, 0, 0, 0, 0]))

# ---- plan: selector character, then the text ----
put("plan", "file_docs", "0" + """seed = 42
allow_corruption = false

[[fault]]
name = "lost interrupts"
kind = "drop-interrupt"
queue = "request"
every = 3

[[fault]]
kind = "delay"
opcode = "read-10"
distribution = "long-tail"
min_ms = 1
max_ms = 500
probability = 0.2
""")
put("plan", "file_states", "0" + """[[fault]]
kind = "delay"
opcode = "write-10"
delay_ms = 0
state = 1
set_state = 2

[[fault]]
kind = "status"
opcode = "read-10"
status = "check-condition"
sense_key = 0x3
asc = 0x11
state = 2
times = 2

[[fault]]
kind = "event"
event = "transport-reset"
reason = "removed"
target = 0
lun = 1
at_ms = 10
interval_ms = 20

[[fault]]
kind = "fail-tmf"
tmf = "abort-task"
response = "failed"
window_ms = [0, 100000]
""")
put("plan", "shorthand_docs", "1" + """drop-interrupt:every=3,queue=request
lose:opcode=read-10,lba=1000..2000,probability=0.1
status:status=check-condition,sense_key=6,asc=0x29
slow-tmf:tmf=lu-reset,duration_ms=3000,new_commands=hold
spurious-interrupt:interval_ms=20,burst=5
corrupt:bytes=4,direction=read
hang-tmf:tmf=i-t-nexus-reset,once=true
""")
put("plan", "control_docs", "2" + """{"cmd":"list"}
{"cmd":"add","fault":{"kind":"lose","opcode":"read-10","once":true}}
{"cmd":"add","fault":{"kind":"event","event":"param-change","asc":42,"ascq":9,"at_ms":1}}
{"cmd":"disable","id":1}
{"cmd":"enable","id":1}
{"cmd":"remove","id":4}
{"cmd":"seed","seed":7}
{"cmd":"stats"}
{"cmd":"fire-event","event":"transport-reset","target":0,"lun":0,"reason":"rescan"}
{"cmd":"flush-trace"}
""")
put("plan", "control_lu", "2" + """{"cmd":"add-lun","lun":"2:7=mem:64K,ro"}
{"cmd":"add-lun","lun":"mem:1M,block-size=4096,sense=descriptor"}
{"cmd":"resize-lun","target":0,"lun":2,"blocks":128}
{"cmd":"remove-lun","target":1,"lun":3}
{"cmd":"rescan"}
{"cmd":"fire-event","event":"param-change","target":0,"lun":0,"asc":42,"ascq":9}
{"cmd":"add","fault":{"kind":"lose","opcode":"read-10","lun":0}}
{"cmd":"add","fault":{"kind":"corrupt","bytes":2,"direction":"read"}}
{"cmd":"list"}
""")
put("plan", "file_events", "0" + """seed = 3
allow_corruption = true

[[fault]]
kind = "event"
event = "param-change"
at_ms = 0

[[fault]]
kind = "hang-tmf"
tmf = "abort-task"

[[fault]]
kind = "status"
status = "short-transfer"
residual = 64
opcode = "read-16"

[[fault]]
kind = "delay"
distribution = "uniform"
min_ms = 0
max_ms = 2
request = "tmf"
""")
