//! A `corrupt` fault's changes: flipped bytes in what a read returns or a write stores.

use std::fs::File;
use std::ops::Deref;
use std::os::unix::fs::FileExt;

use log::warn;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestMemoryMmap};

use crate::faults::Corruption;
use crate::scsi::{DataError, DataOut};

/// The data-out of a write whose stored data a `corrupt` fault changes. Only what goes to
/// the backing file is changed (not parameter lists read with `read_bytes`), and only the
/// first chunk, so a request gets `bytes` flips as on a read.
pub(super) struct CorruptingDataOut<'a> {
    inner: &'a mut dyn DataOut,
    corruption: Option<Corruption>,
}

impl<'a> CorruptingDataOut<'a> {
    pub(super) fn new(inner: &'a mut dyn DataOut, corruption: Corruption) -> Self {
        CorruptingDataOut {
            inner,
            corruption: Some(corruption),
        }
    }
}

/// Bounce buffer of a corrupted write, on the worker's stack.
const CORRUPT_CHUNK: usize = 16 * 1024;

impl DataOut for CorruptingDataOut<'_> {
    fn remaining(&self) -> usize {
        self.inner.remaining()
    }

    fn read_bytes(&mut self, buf: &mut [u8]) -> Result<(), DataError> {
        self.inner.read_bytes(buf)
    }

    fn read_to_file(&mut self, file: &File, offset: u64, len: usize) -> Result<(), DataError> {
        let mut bounce = [0u8; CORRUPT_CHUNK];
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(CORRUPT_CHUNK);
            self.inner.read_bytes(&mut bounce[..n])?;
            if let Some(c) = self.corruption.take() {
                c.apply(&mut bounce[..n]);
            }
            file.write_all_at(&bounce[..n], offset + done as u64)
                .map_err(DataError::File)?;
            done += n;
        }
        Ok(())
    }
}

/// Flips bytes of the `len` data-in bytes that follow the `skip`-byte response.
pub(super) fn corrupt_data_in<M>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<M>,
    skip: usize,
    len: usize,
    corruption: Corruption,
) where
    M: Deref<Target = GuestMemoryMmap> + Clone,
{
    if len == 0 {
        return;
    }
    // A corrupt fault is opt-in (allow_corruption), so this copy is off the normal path.
    let mut buf = vec![0u8; len];
    let regions: Vec<_> = chain
        .filter(|d| d.is_write_only())
        .map(|d| (d.addr(), d.len() as usize))
        .collect();
    let walk = |buf: &mut [u8], write: bool| -> Result<(), vm_memory::GuestMemoryError> {
        let (mut skip, mut done) = (skip, 0usize);
        for &(addr, dlen) in &regions {
            if skip >= dlen {
                skip -= dlen;
                continue;
            }
            let n = (dlen - skip).min(len - done);
            let at = addr.unchecked_add(skip as u64);
            if write {
                mem.write_slice(&buf[done..done + n], at)?;
            } else {
                mem.read_slice(&mut buf[done..done + n], at)?;
            }
            skip = 0;
            done += n;
            if done == len {
                break;
            }
        }
        Ok(())
    };
    let result = walk(&mut buf, false).and_then(|()| {
        corruption.apply(&mut buf);
        walk(&mut buf, true)
    });
    if let Err(e) = result {
        warn!("could not corrupt data-in: {e}");
    }
}
