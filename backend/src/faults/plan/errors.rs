//! Where and how a plan went wrong: the errors, serde's messages made plain, and the line
//! and column of the key at fault.

use std::fmt;

/// Errors from reading or validating a fault plan.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The plan text is not valid; `origin` is the file name (or `<plan>`, `<preset NAME>`).
    #[error("{origin}:{line}:{column}: {message}")]
    Invalid {
        origin: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("fault plan {path} is not a regular file")]
    NotAFile { path: String },
    #[error("fault plan {path} is over {max} bytes")]
    TooLarge { path: String, max: u64 },
    #[error("could not read fault plan {path}")]
    CouldNotRead {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--fault `{text}`: {message}")]
    InvalidShorthand { text: String, message: String },
    #[error("unknown fault preset `{name}` (known presets: {known})")]
    UnknownPreset { name: String, known: String },
    /// A single fault given as data (control socket) is not valid.
    #[error("invalid fault: {message}")]
    InvalidFault { message: String },
    #[error("fault kind `corrupt` needs `allow_corruption = true` at the top level of the plan")]
    CorruptionNotAllowed,
    #[error("a plan holds at most {} faults", super::bounds::MAX_FAULTS)]
    TooManyFaults,
}

/// A validation error tied to one key of a fault (or the whole fault when `key` is `None`).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyError {
    pub key: Option<&'static str>,
    pub message: String,
}

impl KeyError {
    pub(super) fn at(key: &'static str, message: impl Into<String>) -> KeyError {
        KeyError {
            key: Some(key),
            message: message.into(),
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key {
            Some(k) => write!(f, "key `{k}`: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// Make serde's messages plain: name the unknown key with a suggestion instead of listing
/// every key, and say what range an integer must be in.
pub(super) fn plain_message(message: &str) -> String {
    let message = message.trim_end();
    if let Some(rest) = message.strip_prefix("unknown field `") {
        if let Some((key, rest)) = rest.split_once('`') {
            let known: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
            let hint = known
                .iter()
                .map(|k| (edit_distance(key, k), *k))
                .filter(|(d, _)| *d <= 2)
                .min()
                .map_or(String::new(), |(_, k)| format!(" (did you mean `{k}`?)"));
            return format!("unknown key `{key}`{hint}");
        }
    }
    message
        .replace("expected u8", "expected an integer from 0 to 255")
        .replace("expected u16", "expected an integer from 0 to 65535")
        .replace("expected u32", "expected a non-negative integer below 2^32")
        .replace("expected u64", "expected a non-negative integer")
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// 1-based line and column (in characters) of a byte offset.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// Byte offset of `key` in the `index`th `[[fault]]` table (or of the table itself).
pub(super) fn fault_key_offset(text: &str, index: usize, key: Option<&str>) -> usize {
    use toml::de::{DeTable, DeValue};
    let Ok(doc) = DeTable::parse(text) else {
        return 0;
    };
    let Some((_, faults)) = doc
        .get_ref()
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == "fault")
    else {
        return 0;
    };
    let DeValue::Array(array) = faults.get_ref() else {
        return faults.span().start;
    };
    let Some(table) = array.get(index) else {
        return faults.span().start;
    };
    let DeValue::Table(entries) = table.get_ref() else {
        return table.span().start;
    };
    let header = header_offset(text, table.span().start);
    key.and_then(|key| entries.iter().find(|(k, _)| k.get_ref().as_ref() == key))
        .map_or(header, |(k, _)| k.span().start)
}

/// For `[[fault]]` the table's span starts at its first key; point at the header line
/// instead when the whole table is at fault.
fn header_offset(text: &str, start: usize) -> usize {
    let start = start.min(text.len());
    if text.get(start..).is_some_and(|t| t.starts_with("[[")) {
        return start;
    }
    text[..start].rfind("[[").unwrap_or(start)
}
