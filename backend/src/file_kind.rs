//! Naming what a path is, for the errors that refuse it.

use std::fs::Metadata;
use std::os::unix::fs::FileTypeExt;

/// What `meta` describes, with its article ("a FIFO"), for a message that refuses it.
pub fn file_kind(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_file() {
        "a regular file"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else {
        "a special file"
    }
}
