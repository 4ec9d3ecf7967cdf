//! Turns ../layout.env (the disk layout shared with build.sh and the boot sector) into
//! Rust constants: `$OUT_DIR/layout.rs`, included by src/layout.rs.

use std::fmt::Write as _;

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let path = format!("{dir}/../layout.env");
    println!("cargo:rerun-if-changed={path}");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut out = String::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, value) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("{path}:{}: expected NAME=VALUE", n + 1));
        let value: u64 = value
            .parse()
            .unwrap_or_else(|e| panic!("{path}:{}: {name}: {e}", n + 1));
        writeln!(out, "pub const {name}: u64 = {value};").expect("writing to a String");
    }
    let out_dir = std::env::var("OUT_DIR").expect("cargo sets OUT_DIR");
    std::fs::write(format!("{out_dir}/layout.rs"), out).expect("writing layout.rs");
}
