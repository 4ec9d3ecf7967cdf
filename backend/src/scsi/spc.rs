//! Primary commands (SPC-4): TEST UNIT READY, REQUEST SENSE, INQUIRY and its VPD pages,
//! MODE SENSE, REPORT LUNS and REPORT SUPPORTED OPERATION CODES.

use super::lun::serial_value;
use super::sense::{SenseFormat, DESCRIPTOR_SENSE_MAX_LEN};
use super::{
    be_u16, be_u32, cdb_byte, has_service_actions, put_alloc, put_truncated, CmdOutcome, CmdResult,
    DataIn, DataOut, Lun, LunAddress, Sense, Target, COMMANDS,
};

const OK: CmdResult = Ok(CmdOutcome::GOOD);

fn invalid_field() -> CmdResult {
    Ok(CmdOutcome::check_condition(Sense::INVALID_FIELD_IN_CDB))
}

pub(super) fn test_unit_ready(
    _: &Target,
    _: &Lun,
    _: &[u8],
    _: &mut dyn DataIn,
    _: &mut dyn DataOut,
) -> CmdResult {
    OK
}

/// REQUEST SENSE returns and clears a pending unit attention, else the LU's readiness
/// (SPC-4 6.39). DESC picks the format.
pub(super) fn request_sense(
    _: &Target,
    lu: &Lun,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &mut dyn DataOut,
) -> CmdResult {
    let sense = lu.take_ua().unwrap_or(if lu.stopped() {
        Sense::NOT_READY_INITIALIZING_COMMAND_REQUIRED
    } else {
        Sense::NO_SENSE
    });
    put_sense_data(sense, cdb, data_in)
}

fn put_sense_data(sense: Sense, cdb: &[u8], data_in: &mut dyn DataIn) -> CmdResult {
    let format = if cdb_byte(cdb, 1) & 0x01 != 0 {
        SenseFormat::Descriptor
    } else {
        SenseFormat::Fixed
    };
    let mut buf = [0u8; DESCRIPTOR_SENSE_MAX_LEN];
    let len = sense.encode(format, &mut buf);
    put_alloc(data_in, &buf[..len], usize::from(cdb_byte(cdb, 4)))?;
    OK
}

/// Standard INQUIRY data length (SPC-4 6.6.2: additional length 31).
pub const INQUIRY_LEN: usize = 36;

/// VPD pages served, in the order page 00h lists them.
const VPD_PAGES: [u8; 6] = [0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2];

/// Largest UNMAP parameter list the target reads: 8-byte header plus descriptors.
pub(super) const MAX_UNMAP_DESCRIPTORS: usize = 256;
/// Largest WRITE SAME, in blocks (VPD B0h MAXIMUM WRITE SAME LENGTH).
pub(super) const MAX_WRITE_SAME_BLOCKS: u64 = 1 << 22;

fn standard_inquiry(peripheral: u8) -> [u8; INQUIRY_LEN] {
    let mut data = [0u8; INQUIRY_LEN];
    data[0] = peripheral;
    data[2] = 0x06; // SPC-4
    data[3] = 0x02; // response data format 2
    data[4] = (INQUIRY_LEN - 5) as u8;
    data[7] = 0x02; // CMDQUE: tagged queuing
    data[8..16].copy_from_slice(b"FLAKYHBA");
    data[16..32].copy_from_slice(b"VIRTUAL DISK    ");
    data[32..36].copy_from_slice(b"0001");
    data
}

pub(super) fn inquiry(
    _: &Target,
    lu: &Lun,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &mut dyn DataOut,
) -> CmdResult {
    let alloc = usize::from(be_u16(cdb, 3));
    let evpd = cdb_byte(cdb, 1) & 0x01 != 0;
    let page = cdb_byte(cdb, 2);
    if !evpd {
        // A page code without EVPD is an invalid field (SPC-4 6.6.1).
        if page != 0 {
            return invalid_field();
        }
        put_alloc(data_in, &standard_inquiry(0x00), alloc)?;
        return OK;
    }
    let mut buf = [0u8; 64];
    let len = match vpd_page(lu, page, &mut buf) {
        Some(len) => len,
        None => return invalid_field(),
    };
    put_alloc(data_in, &buf[..len], alloc)?;
    OK
}

/// Builds VPD page `page` of `lu` into `buf`; returns its length.
fn vpd_page(lu: &Lun, page: u8, buf: &mut [u8; 64]) -> Option<usize> {
    buf[1] = page;
    let body_len = match page {
        0x00 => {
            buf[4..4 + VPD_PAGES.len()].copy_from_slice(&VPD_PAGES);
            VPD_PAGES.len()
        }
        // Unit serial number.
        0x80 => {
            buf[4..20].copy_from_slice(&lu.serial);
            16
        }
        // Device identification: an NAA locally assigned designator and a T10 vendor ID
        // designator, both derived from the serial, so stable across runs.
        0x83 => {
            let naa = 0x3u64 << 60 | serial_value(&lu.serial) & 0x0fff_ffff_ffff_ffff;
            let d = &mut buf[4..];
            d[0] = 0x01; // binary
            d[1] = 0x03; // LU association, NAA
            d[3] = 8;
            d[4..12].copy_from_slice(&naa.to_be_bytes());
            let d = &mut d[12..];
            d[0] = 0x02; // ASCII
            d[1] = 0x01; // LU association, T10 vendor ID
            d[3] = 24;
            d[4..12].copy_from_slice(b"FLAKYHBA");
            d[12..28].copy_from_slice(&lu.serial);
            12 + 28
        }
        // Block limits: only what the LU can do.
        0xb0 => {
            let b = &mut buf[4..];
            b[0] = 0x01; // WSNZ: WRITE SAME of zero blocks is refused
            if lu.can_punch() {
                b[16..20].copy_from_slice(&u32::MAX.to_be_bytes()); // no UNMAP LBA limit
                b[20..24].copy_from_slice(&(MAX_UNMAP_DESCRIPTORS as u32).to_be_bytes());
                // Holes are page-sized: smaller unmaps only zero.
                let granularity = (4096 / lu.block_size()).max(1);
                b[24..28].copy_from_slice(&granularity.to_be_bytes());
            }
            b[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
            0x3c
        }
        // Block device characteristics: non-rotating medium.
        0xb1 => {
            buf[4..6].copy_from_slice(&1u16.to_be_bytes());
            0x3c
        }
        // Logical block provisioning: thin only where holes can be punched.
        0xb2 => {
            if lu.can_punch() {
                // LBPU, LBPWS, LBPWS10, LBPRZ=001b (a punched hole reads as zeros).
                buf[5] = 0x80 | 0x40 | 0x20 | 0x04;
                buf[6] = 0x02; // thin provisioned
            }
            4
        }
        _ => return None,
    };
    buf[2..4].copy_from_slice(&(body_len as u16).to_be_bytes());
    Some(4 + body_len)
}

/// Mode page codes (SBC-3 6.4).
const CACHING_PAGE: u8 = 0x08;
const CONTROL_PAGE: u8 = 0x0a;
const ALL_PAGES: u8 = 0x3f;

/// Page control field of MODE SENSE.
const PC_CHANGEABLE: u8 = 1;
const PC_SAVED: u8 = 3;

fn caching_page(changeable: bool) -> [u8; 20] {
    let mut p = [0u8; 20];
    p[0] = CACHING_PAGE;
    p[1] = 0x12;
    if !changeable {
        // WCE: writes land in the page cache; SYNCHRONIZE CACHE and FUA make them durable.
        p[2] = 0x04;
    }
    p
}

fn control_page(lu: &Lun, changeable: bool) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0] = CONTROL_PAGE;
    p[1] = 0x0a;
    if !changeable {
        // D_SENSE from the LU's configuration (no MODE SELECT); GLTSD: no log pages.
        p[2] = 0x02
            | if lu.sense_format() == SenseFormat::Descriptor {
                0x04
            } else {
                0
            };
        p[3] = 0x10; // QUEUE ALGORITHM MODIFIER 1: unrestricted reordering
        p[8..10].copy_from_slice(&0xffffu16.to_be_bytes()); // busy timeout: unlimited
    }
    p
}

/// MODE SENSE(6) and (10) with the caching and control pages (SPC-4 6.11, 6.12).
pub(super) fn mode_sense(
    _: &Target,
    lu: &Lun,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &mut dyn DataOut,
) -> CmdResult {
    let ten = cdb_byte(cdb, 0) == super::opcode::MODE_SENSE_10;
    let dbd = cdb_byte(cdb, 1) & 0x08 != 0;
    let llbaa = ten && cdb_byte(cdb, 1) & 0x10 != 0;
    let pc = cdb_byte(cdb, 2) >> 6;
    let page = cdb_byte(cdb, 2) & 0x3f;
    let subpage = cdb_byte(cdb, 3);
    let alloc = if ten {
        usize::from(be_u16(cdb, 7))
    } else {
        usize::from(cdb_byte(cdb, 4))
    };
    if pc == PC_SAVED {
        return Ok(CmdOutcome::check_condition(
            Sense::SAVING_PARAMETERS_NOT_SUPPORTED,
        ));
    }
    // No subpages exist; 0xff with "all pages" asks for all subpages, which is the same.
    if subpage != 0 && !(page == ALL_PAGES && subpage == 0xff) {
        return invalid_field();
    }
    let changeable = pc == PC_CHANGEABLE;
    let mut buf = [0u8; 8 + 16 + 20 + 12];
    let header = if ten { 8 } else { 4 };
    let mut len = header;
    // Block descriptor.
    if !dbd {
        let blocks = lu.blocks();
        let bs = lu.block_size();
        if llbaa {
            buf[len..len + 8].copy_from_slice(&blocks.to_be_bytes());
            buf[len + 12..len + 16].copy_from_slice(&bs.to_be_bytes());
            len += 16;
        } else {
            let short = u32::try_from(blocks).unwrap_or(u32::MAX);
            buf[len..len + 4].copy_from_slice(&short.to_be_bytes());
            buf[len + 5..len + 8].copy_from_slice(&bs.to_be_bytes()[1..]);
            len += 8;
        }
    }
    let block_desc_len = len - header;
    if matches!(page, CACHING_PAGE | ALL_PAGES) {
        let p = caching_page(changeable);
        buf[len..len + p.len()].copy_from_slice(&p);
        len += p.len();
    }
    if matches!(page, CONTROL_PAGE | ALL_PAGES) {
        let p = control_page(lu, changeable);
        buf[len..len + p.len()].copy_from_slice(&p);
        len += p.len();
    }
    if !matches!(page, CACHING_PAGE | CONTROL_PAGE | ALL_PAGES) {
        return invalid_field();
    }
    // WP for a read-only LU; DPOFUA: FUA is honoured.
    let device_specific = if lu.read_only() { 0x80 } else { 0 } | 0x10;
    if ten {
        buf[0..2].copy_from_slice(&((len - 2) as u16).to_be_bytes());
        buf[3] = device_specific;
        buf[4] = u8::from(llbaa && !dbd);
        buf[6..8].copy_from_slice(&(block_desc_len as u16).to_be_bytes());
    } else {
        buf[0] = (len - 1) as u8;
        buf[2] = device_specific;
        buf[3] = block_desc_len as u8;
    }
    put_alloc(data_in, &buf[..len], alloc)?;
    OK
}

pub(super) fn report_luns(
    target: &Target,
    lu: &Lun,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &mut dyn DataOut,
) -> CmdResult {
    let id = lu.address.map_or(0, |a| a.target);
    report_luns_of(target, id, cdb, data_in)
}

fn report_luns_of(target: &Target, id: u8, cdb: &[u8], data_in: &mut dyn DataIn) -> CmdResult {
    let alloc = be_u32(cdb, 6) as usize;
    // SPC-4 6.33: an allocation length below 16 is an invalid field.
    if alloc < 16 {
        return invalid_field();
    }
    // SELECT REPORT 0, 1 and 2 all mean "the LUs there are" here (no well-known LUs).
    if cdb_byte(cdb, 2) > 2 {
        return invalid_field();
    }
    let on_target = || target.luns().filter(move |(a, _)| a.target == id);
    let list_len = (on_target().count() * 8) as u32;
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&list_len.to_be_bytes());
    let mut budget = alloc.min(data_in.remaining());
    put_truncated(data_in, &header, &mut budget)?;
    for (addr, _) in on_target() {
        if budget == 0 {
            break;
        }
        put_truncated(data_in, &single_level_lun(addr.lun), &mut budget)?;
    }
    OK
}

/// A single-level LUN as REPORT LUNS lists it: peripheral addressing below 256, flat
/// space above (SAM-5 4.7). Events name an LU the same way (virtio.rs's `event_lun`).
pub fn single_level_lun(lun: u16) -> [u8; 8] {
    let mut e = [0u8; 8];
    if lun < 256 {
        e[1] = lun as u8;
    } else {
        e[0] = 0x40 | ((lun >> 8) as u8 & 0x3f);
        e[1] = lun as u8;
    }
    e
}

/// REPORT SUPPORTED OPERATION CODES (SPC-4 6.35), read from the one command table.
pub(super) fn report_supported_operation_codes(
    _: &Target,
    lu: &Lun,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
    _: &mut dyn DataOut,
) -> CmdResult {
    let rctd = cdb_byte(cdb, 2) & 0x80 != 0;
    let options = cdb_byte(cdb, 2) & 0x07;
    let req_op = cdb_byte(cdb, 3);
    let req_sa = be_u16(cdb, 4);
    let alloc = be_u32(cdb, 6) as usize;
    let mut budget = alloc.min(data_in.remaining());
    // Command timeouts descriptor (SPC-4 6.35.4): no timeouts reported.
    let mut timeouts = [0u8; 12];
    timeouts[1] = 0x0a;
    let offered = || COMMANDS.iter().filter(|c| c.offered_by(lu));
    match options {
        0 => {
            let desc_len = if rctd { 20 } else { 8 };
            let total = (offered().count() * desc_len) as u32;
            put_truncated(data_in, &total.to_be_bytes(), &mut budget)?;
            for c in offered() {
                let mut d = [0u8; 8];
                d[0] = c.opcode;
                if let Some(sa) = c.service_action {
                    d[2..4].copy_from_slice(&u16::from(sa).to_be_bytes());
                    d[5] |= 0x01; // SERVACTV
                }
                if rctd {
                    d[5] |= 0x02; // CTDP
                }
                d[6..8].copy_from_slice(&(c.usage.len() as u16).to_be_bytes());
                put_truncated(data_in, &d, &mut budget)?;
                if rctd {
                    put_truncated(data_in, &timeouts, &mut budget)?;
                }
            }
            OK
        }
        1..=3 => {
            let with_sa = has_service_actions(req_op);
            // 1: opcode only, which must have no service actions; 2: opcode and service
            // action, which it must have; 3: either.
            if (options == 1 && with_sa) || (options == 2 && !with_sa) {
                return invalid_field();
            }
            let found = offered().find(|c| {
                c.opcode == req_op && c.service_action.is_none_or(|sa| u16::from(sa) == req_sa)
            });
            let mut head = [0u8; 4];
            match found {
                Some(c) => {
                    head[1] = 0x03 | if rctd { 0x80 } else { 0 }; // supported (standard)
                    head[2..4].copy_from_slice(&(c.usage.len() as u16).to_be_bytes());
                    put_truncated(data_in, &head, &mut budget)?;
                    put_truncated(data_in, c.usage, &mut budget)?;
                    if rctd {
                        put_truncated(data_in, &timeouts, &mut budget)?;
                    }
                }
                None => {
                    head[1] = 0x01; // not supported
                    put_truncated(data_in, &head, &mut budget)?;
                }
            }
            OK
        }
        _ => invalid_field(),
    }
}

/// A command to an absent LUN of a present target (SPC-4 4.6.4, 6.6.2).
pub(super) fn absent_lun(
    target: &Target,
    addr: LunAddress,
    cdb: &[u8],
    data_in: &mut dyn DataIn,
) -> CmdResult {
    match cdb_byte(cdb, 0) {
        super::opcode::INQUIRY => {
            if cdb_byte(cdb, 1) & 0x01 != 0 || cdb_byte(cdb, 2) != 0 {
                return invalid_field();
            }
            // Peripheral qualifier 011b, device type 1Fh: no LU can be here.
            put_alloc(
                data_in,
                &standard_inquiry(0x7f),
                usize::from(be_u16(cdb, 3)),
            )?;
            OK
        }
        super::opcode::REPORT_LUNS => report_luns_of(target, addr.target, cdb, data_in),
        super::opcode::REQUEST_SENSE => {
            put_sense_data(Sense::LOGICAL_UNIT_NOT_SUPPORTED, cdb, data_in)
        }
        _ => Ok(CmdOutcome::check_condition(
            Sense::LOGICAL_UNIT_NOT_SUPPORTED,
        )),
    }
}
