//! The control socket (`--control-socket PATH`), the device's control plane: it changes
//! the fault plan (faults, seed, events) and the bus (LU hot-plug, resize, rescan) while
//! the device runs. JSON lines in, one JSON object out per line; a bad line gets
//! `{"ok":false,"error":...}` and the connection stays open.

mod commands;
mod socket;

#[cfg(test)]
mod tests;

pub use commands::{handle_line, handle_line_with_target, CommandError};
pub use socket::{
    serve, serve_with_target, ControlError, ControlServer, MAX_CONNECTIONS, MAX_LINE,
};
