//! Printing errors: one line with the whole cause chain.

/// An error with its causes, on one line: "msg: cause: cause". Errors mark their cause
/// `#[source]` and leave it out of their own message, so each cause is told once.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}
