//! The `--fault KIND:key=value,...` shorthand (and the control socket's JSON faults): read
//! into the table form, then validated as a `[[fault]]` table is.

use super::errors::{plain_message, PlanError};
use super::raw::RawFault;
use super::spec::FaultSpec;

impl FaultSpec {
    /// Parse the `--fault` shorthand `KIND:key=value,key=value`.
    ///
    /// Values: `true`/`false`, integers (decimal or `0x` hex), decimals, ranges `A..B` (for `lba` and `window_ms`),
    /// anything else is a string. The result goes through the same validation as a
    /// `[[fault]]` table.
    pub fn from_shorthand(text: &str, allow_corruption: bool) -> Result<FaultSpec, PlanError> {
        let err = |message: String| PlanError::InvalidShorthand {
            text: text.to_owned(),
            message,
        };
        let (kind, rest) = match text.split_once(':') {
            Some((k, r)) => (k.trim(), r),
            None => (text.trim(), ""),
        };
        if kind.is_empty() {
            return Err(err("missing fault kind before `:`".into()));
        }
        // The fault as TOML text, one key a line: a number keeps all of its 64 bits
        // (a toml::Value holds an i64) and reaches the same bounds as in a file.
        let mut keys = vec!["kind"];
        let mut text = format!("kind = {}\n", quoted(kind));
        for pair in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| err(format!("`{pair}` is not key=value")))?;
            let (key, value) = (key.trim(), value.trim());
            if key == "kind" {
                return Err(err("the kind goes before the `:`".into()));
            }
            if keys.contains(&key) {
                return Err(err(format!("key `{key}` given twice")));
            }
            keys.push(key);
            text.push_str(&format!("{} = {}\n", quoted(key), shorthand_value(value)));
        }
        let raw: RawFault = toml::from_str(&text).map_err(|e: toml::de::Error| {
            let message = plain_message(e.message());
            // The line of the error is its key's.
            let line = e.span().map(|s| text[..s.start].matches('\n').count());
            match line.and_then(|l| keys.get(l)) {
                Some(key) if !message.contains(&format!("`{key}`")) => {
                    err(format!("key `{key}`: {message}"))
                }
                _ => err(message),
            }
        })?;
        FaultSpec::from_raw(raw, allow_corruption).map_err(|e| err(e.to_string()))
    }

    /// Validate a fault given as JSON (the control socket's `add`).
    pub fn from_json(
        value: serde_json::Value,
        allow_corruption: bool,
    ) -> Result<FaultSpec, PlanError> {
        let raw: RawFault = serde_json::from_value(value).map_err(|e| PlanError::InvalidFault {
            message: plain_message(&e.to_string()),
        })?;
        FaultSpec::from_raw(raw, allow_corruption).map_err(|e| PlanError::InvalidFault {
            message: e.to_string(),
        })
    }
}

/// A TOML string literal.
fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A shorthand value as a TOML value: `true`/`false`, an integer (decimal or `0x` hex), a
/// decimal, `A..B` as `[A, B]`, and anything else a string.
fn shorthand_value(v: &str) -> String {
    let integer = |s: &str| {
        let s = s.trim();
        match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).ok().map(|n| n.to_string()),
            None => s
                .parse::<u64>()
                .map(|n| n.to_string())
                .or_else(|_| s.parse::<i64>().map(|n| n.to_string()))
                .ok()
                // Too large even for 64 bits: TOML says so.
                .or_else(|| {
                    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.to_owned())
                }),
        }
    };
    if let Some((a, b)) = v.split_once("..") {
        if let (Some(a), Some(b)) = (integer(a), integer(b)) {
            return format!("[{a}, {b}]");
        }
    }
    if v == "true" || v == "false" {
        return v.to_owned();
    }
    if let Some(n) = integer(v) {
        return n;
    }
    match v.parse::<f64>() {
        Ok(f) if f.is_finite() => format!("{f:?}"),
        _ => quoted(v),
    }
}
