//! The card's initramfs: linux-guest's, with a second archive appended that adds the
//! card's /card-init. Linux unpacks concatenated archives in order (each compressed or
//! not; an uncompressed one starts on a 4-byte boundary, zeros between are skipped).

use std::io::Write;
use std::path::Path;

/// A `newc` (SVR4, no CRC) archive of regular files (name, mode bits, contents), with
/// the trailer.
pub fn newc(files: &[(&str, u32, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (ino, (name, mode, data)) in files.iter().enumerate() {
        entry(&mut out, ino as u32 + 1, name, 0o100000 | mode, data);
    }
    entry(&mut out, 0, "TRAILER!!!", 0, &[]);
    out
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

fn entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, data: &[u8]) {
    let nlink = u32::from(mode != 0);
    let fields = [
        ino,
        mode,
        0, // uid
        0, // gid
        nlink,
        0, // mtime
        data.len() as u32,
        0,
        0,
        0,
        0, // dev and rdev, major and minor
        name.len() as u32 + 1,
        0, // check
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

/// Writes `base` (an initramfs, compressed or not) followed by an archive of `files` to
/// `to`.
pub fn append(base: &Path, files: &[(&str, u32, &[u8])], to: &Path) -> std::io::Result<()> {
    let mut bytes = std::fs::read(base)?;
    pad4(&mut bytes);
    bytes.extend_from_slice(&newc(files));
    let mut out = std::fs::File::create(to)?;
    out.write_all(&bytes)?;
    out.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archive_has_aligned_headers_names_and_data() {
        let a = newc(&[("card-init", 0o755, b"#!/bin/sh\n")]);
        assert_eq!(&a[..6], b"070701");
        // ino 1, mode 0100755, filesize 10, namesize 10.
        let field = |n: usize| std::str::from_utf8(&a[6 + 8 * n..14 + 8 * n]).unwrap();
        assert_eq!(field(0), "00000001");
        assert_eq!(field(1), "000081ed");
        assert_eq!(field(6), "0000000a");
        assert_eq!(field(11), "0000000a");
        // 110-byte header + "card-init\0" = 120, already aligned; then the data.
        assert_eq!(&a[110..120], b"card-init\0");
        assert_eq!(&a[120..130], b"#!/bin/sh\n");
        let trailer = 132;
        assert_eq!(&a[trailer..trailer + 6], b"070701");
        assert_eq!(&a[trailer + 110..trailer + 121], b"TRAILER!!!\0");
        assert_eq!(a.len() % 4, 0);
    }

    #[test]
    fn the_archive_starts_on_a_four_byte_boundary_after_the_base() {
        let dir = std::env::temp_dir().join(format!("fh-overlay-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("base"), b"gzip!").unwrap();
        append(&dir.join("base"), &[("x", 0o644, b"y")], &dir.join("out")).unwrap();
        let out = std::fs::read(dir.join("out")).unwrap();
        assert_eq!(&out[..8], b"gzip!\0\0\0");
        assert_eq!(&out[8..14], b"070701");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
