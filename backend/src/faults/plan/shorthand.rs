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
        let mut table = toml::Table::new();
        table.insert("kind".into(), toml::Value::String(kind.into()));
        for pair in rest.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| err(format!("`{pair}` is not key=value")))?;
            let (key, value) = (key.trim(), value.trim());
            if key == "kind" {
                return Err(err("the kind goes before the `:`".into()));
            }
            if table.insert(key.into(), shorthand_value(value)).is_some() {
                return Err(err(format!("key `{key}` given twice")));
            }
        }
        let raw: RawFault = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| err(plain_message(e.message())))?;
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

fn shorthand_value(v: &str) -> toml::Value {
    if let Some((a, b)) = v.split_once("..") {
        if let (Ok(a), Ok(b)) = (a.trim().parse::<i64>(), b.trim().parse::<i64>()) {
            return toml::Value::Array(vec![toml::Value::Integer(a), toml::Value::Integer(b)]);
        }
    }
    match v {
        "true" => return toml::Value::Boolean(true),
        "false" => return toml::Value::Boolean(false),
        _ => {}
    }
    if let Ok(i) = v.parse::<i64>() {
        return toml::Value::Integer(i);
    }
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if let Ok(i) = i64::from_str_radix(hex, 16) {
            return toml::Value::Integer(i);
        }
    }
    if let Ok(f) = v.parse::<f64>() {
        if f.is_finite() {
            return toml::Value::Float(f);
        }
    }
    toml::Value::String(v.to_owned())
}
