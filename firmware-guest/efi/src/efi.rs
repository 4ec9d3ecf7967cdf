//! The firmware side: the entry point, the backend's disk as a [`Disk`] over BlockIo,
//! COM1 and isa-debug-exit.

use core::ffi::c_void;
use core::ptr;

use r_efi::efi::{self, BootServices, Guid, Handle, Status, SystemTable};
use r_efi::protocols::{block_io, device_path};
use uart_16550::backend::PioBackend;
use uart_16550::{BaudRate, Config, Uart16550};
use x86_64::instructions::port::Port;

use crate::layout::{BLOCK_SIZE, DISK_BLOCKS};
use crate::report;
use crate::run::{self, Disk, Outcome, Step};

const COM1: u16 = 0x3f8;
const DEBUG_EXIT_PORT: u16 = 0xf4;
/// QEMU exits with `(code << 1) | 1`: 33 for a pass, 35 for a failure.
const EXIT_PASS: u32 = 0x10;
const EXIT_FAIL: u32 = 0x11;
/// The messaging device path node of a SCSI device (UEFI 2.10, 10.3.4.2); r-efi names no
/// messaging subtypes.
const MSG_SCSI: u8 = 0x02;

#[export_name = "efi_main"]
pub extern "efiapi" fn efi_main(_image: Handle, st: *mut SystemTable) -> Status {
    let mut serial = Serial::open();
    let out = &mut |line: &str| serial.send(line);
    // SAFETY: the firmware hands over a valid system table, and its boot services stay
    // valid: this program never calls ExitBootServices.
    let bs = unsafe { &*(*st).boot_services };
    // SAFETY: RDTSC has no preconditions on x86_64.
    let generation = run::write_generation(unsafe { core::arch::x86_64::_rdtsc() });
    let code = match find_disk(bs) {
        Ok(mut disk) => {
            let media = disk.media();
            let blocks = media.last_block + 1;
            report::start(
                out,
                blocks,
                media.block_size,
                media.io_align,
                media.media_id,
            );
            if run::run(&mut disk, generation, out).failed.is_none() {
                EXIT_PASS
            } else {
                EXIT_FAIL
            }
        }
        Err(status) => {
            report::error(out, Step::FindDisk, None, status);
            let mut o = Outcome::new(generation);
            o.failed = Some(Step::FindDisk);
            report::result(out, &o);
            EXIT_FAIL
        }
    };
    exit_qemu(code)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    Serial::open().send("{\"fw\":\"ovmf\",\"result\":\"fail\",\"failed_step\":\"panic\"}\r\n");
    exit_qemu(EXIT_FAIL)
}

fn exit_qemu(code: u32) -> ! {
    let mut port: Port<u32> = Port::new(DEBUG_EXIT_PORT);
    // SAFETY: writing the isa-debug-exit port ends QEMU; without the device it is ignored.
    unsafe { port.write(code) };
    loop {
        x86_64::instructions::hlt();
    }
}

/// COM1, which OVMF also drives (polled, 115200 8N1); each JSON line is sent whole.
struct Serial(Option<Uart16550<PioBackend>>);

impl Serial {
    fn open() -> Self {
        // SAFETY: 0x3f8..0x3ff is COM1 on every PC QEMU emulates; OVMF's own serial driver
        // only writes it while this program prints nothing through the firmware console.
        let Ok(mut uart) = (unsafe { Uart16550::new_port(COM1) }) else {
            return Serial(None);
        };
        let config = Config {
            baud_rate: BaudRate::Baud115200,
            ..Config::DEFAULT
        };
        Serial(uart.init(config).ok().map(|()| uart))
    }

    fn send(&mut self, line: &str) {
        if let Some(uart) = &mut self.0 {
            uart.send_bytes_exact(line.as_bytes());
        }
    }
}

/// `handle`'s interface of the protocol `guid`, as a `*mut T`.
fn protocol<T>(bs: &BootServices, handle: Handle, guid: Guid) -> Option<*mut T> {
    let mut guid = guid;
    let mut interface: *mut c_void = ptr::null_mut();
    // SAFETY: HandleProtocol with a valid handle, GUID and out pointer.
    let status = unsafe { (bs.handle_protocol)(handle, &mut guid, &mut interface) };
    (!status.is_error() && !interface.is_null()).then_some(interface.cast())
}

/// Whether the device path has a SCSI node: the backend's disk hangs off the virtio-scsi
/// HBA (its partitions do too; `find_disk` tells them apart by LogicalPartition).
///
/// # Safety
///
/// `node` must point to a device path that ends in an end node, as the firmware's do.
unsafe fn has_scsi_node(mut node: *const device_path::Protocol) -> bool {
    loop {
        // SAFETY: the caller's device path runs to its end node, and each step below moves
        // by the current node's length to the next node.
        let n = unsafe { ptr::read_unaligned(node) };
        if n.r#type == device_path::TYPE_END {
            return false;
        }
        if n.r#type == device_path::TYPE_MESSAGING && n.sub_type == MSG_SCSI {
            return true;
        }
        let len = usize::from(u16::from_le_bytes(n.length));
        if len < core::mem::size_of::<device_path::Protocol>() {
            return false;
        }
        // SAFETY: as above, the next node starts `len` bytes on.
        node = unsafe { node.cast::<u8>().add(len).cast() };
    }
}

/// The backend's disk: the BlockIo of the whole disk (not a partition) on a SCSI path,
/// with the layout's size in 512-byte blocks.
fn find_disk(bs: &BootServices) -> Result<BlockIoDisk, Status> {
    let mut handles: [Handle; 64] = [ptr::null_mut(); 64];
    let mut size = core::mem::size_of_val(&handles);
    let mut guid = block_io::PROTOCOL_GUID;
    // SAFETY: LocateHandle writes at most `size` bytes of handles into `handles`.
    let status = unsafe {
        (bs.locate_handle)(
            efi::BY_PROTOCOL,
            &mut guid,
            ptr::null_mut(),
            &mut size,
            handles.as_mut_ptr(),
        )
    };
    if status.is_error() {
        return Err(status);
    }
    let count = (size / core::mem::size_of::<Handle>()).min(handles.len());
    for &handle in &handles[..count] {
        let Some(bio) = protocol::<block_io::Protocol>(bs, handle, block_io::PROTOCOL_GUID) else {
            continue;
        };
        let disk = BlockIoDisk(bio);
        let media = disk.media();
        if media.logical_partition
            || !media.media_present
            || media.block_size as usize != BLOCK_SIZE
            || media.last_block + 1 != DISK_BLOCKS
        {
            continue;
        }
        let Some(path) = protocol::<device_path::Protocol>(bs, handle, device_path::PROTOCOL_GUID)
        else {
            continue;
        };
        // SAFETY: the firmware's device path protocol is a whole device path.
        if unsafe { has_scsi_node(path) } {
            return Ok(disk);
        }
    }
    Err(Status::NOT_FOUND)
}

struct BlockIoDisk(*mut block_io::Protocol);

impl BlockIoDisk {
    /// The media as the driver sees it now (its MediaId changes with a media change).
    fn media(&self) -> block_io::Media {
        // SAFETY: the protocol came from HandleProtocol and its media pointer stays valid
        // while the driver is bound, which is for the whole run.
        unsafe { *(*self.0).media }
    }
}

fn status_result(status: Status) -> Result<(), Status> {
    if status.is_error() {
        Err(status)
    } else {
        Ok(())
    }
}

impl Disk for BlockIoDisk {
    fn read(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), Status> {
        let id = self.media().media_id;
        // SAFETY: `buf` is whole blocks, page aligned (run::Chunk), writable for its length.
        status_result(unsafe {
            ((*self.0).read_blocks)(self.0, id, lba, buf.len(), buf.as_mut_ptr().cast())
        })
    }

    fn write(&mut self, lba: u64, buf: &[u8]) -> Result<(), Status> {
        let id = self.media().media_id;
        // SAFETY: as in `read`; WriteBlocks only reads the buffer.
        status_result(unsafe {
            ((*self.0).write_blocks)(self.0, id, lba, buf.len(), buf.as_ptr().cast_mut().cast())
        })
    }

    fn flush(&mut self) -> Result<(), Status> {
        // SAFETY: FlushBlocks on the protocol it belongs to.
        status_result(unsafe { ((*self.0).flush_blocks)(self.0) })
    }
}
