//! The plan as written: one [`RawFault`] per `[[fault]]` table (or control-socket JSON
//! object), before validation.

use std::fmt;

use serde::de::{self, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

/// A number or a name: opcodes (`"read-10"`, `0x28`, `40`) and queues (`"request"`, `2`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum NumOrName {
    Num(u64),
    Name(String),
}

impl<'de> Deserialize<'de> for NumOrName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = NumOrName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a non-negative integer or a name")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<NumOrName, E> {
                Ok(NumOrName::Num(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<NumOrName, E> {
                u64::try_from(v)
                    .map(NumOrName::Num)
                    .map_err(|_| E::custom(format!("expected a non-negative integer, got {v}")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NumOrName, E> {
                Ok(NumOrName::Name(v.to_owned()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A two-element key (`lba`, `window_ms`): exactly two elements, never cut to two.
fn pair<'de, D: Deserializer<'de>>(d: D) -> Result<Option<[u64; 2]>, D::Error> {
    let v = Vec::<u64>::deserialize(d)?;
    <[u64; 2]>::try_from(v)
        .map(Some)
        .map_err(|v| de::Error::invalid_length(v.len(), &"exactly two elements, [first, last]"))
}

/// One `[[fault]]` table exactly as written (also the JSON object of the control socket's
/// `add` command). Kept next to the validated form so that `list` can show it back.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFault {
    pub kind: String,
    pub name: Option<String>,
    pub enabled: Option<bool>,
    // Matching.
    pub queue: Option<NumOrName>,
    pub request: Option<String>,
    pub target: Option<u8>,
    pub lun: Option<u16>,
    pub opcode: Option<NumOrName>,
    pub tmf: Option<String>,
    #[serde(default, deserialize_with = "pair")]
    pub lba: Option<[u64; 2]>,
    pub direction: Option<String>,
    // Triggers.
    pub every: Option<u64>,
    pub probability: Option<f64>,
    pub after: Option<u64>,
    pub times: Option<u64>,
    pub once: Option<bool>,
    #[serde(default, deserialize_with = "pair")]
    pub window_ms: Option<[u64; 2]>,
    pub state: Option<u32>,
    pub set_state: Option<u32>,
    // Kind parameters.
    pub delay_ms: Option<u64>,
    pub distribution: Option<String>,
    pub min_ms: Option<u64>,
    pub max_ms: Option<u64>,
    pub alpha: Option<f64>,
    pub duration_ms: Option<u64>,
    pub new_commands: Option<String>,
    pub response: Option<String>,
    pub interval_ms: Option<u64>,
    pub at_ms: Option<u64>,
    pub burst: Option<u32>,
    pub status: Option<String>,
    pub sense_key: Option<u8>,
    pub asc: Option<u8>,
    pub ascq: Option<u8>,
    pub residual: Option<u32>,
    pub event: Option<String>,
    pub reason: Option<String>,
    pub bytes: Option<u32>,
}

impl RawFault {
    /// The keys that are set, for the per-kind applicability check.
    pub(super) fn present_keys(&self) -> impl Iterator<Item = &'static str> {
        let keys = [
            ("name", self.name.is_some()),
            ("enabled", self.enabled.is_some()),
            ("queue", self.queue.is_some()),
            ("request", self.request.is_some()),
            ("target", self.target.is_some()),
            ("lun", self.lun.is_some()),
            ("opcode", self.opcode.is_some()),
            ("tmf", self.tmf.is_some()),
            ("lba", self.lba.is_some()),
            ("direction", self.direction.is_some()),
            ("every", self.every.is_some()),
            ("probability", self.probability.is_some()),
            ("after", self.after.is_some()),
            ("times", self.times.is_some()),
            ("once", self.once.is_some()),
            ("window_ms", self.window_ms.is_some()),
            ("state", self.state.is_some()),
            ("set_state", self.set_state.is_some()),
            ("delay_ms", self.delay_ms.is_some()),
            ("distribution", self.distribution.is_some()),
            ("min_ms", self.min_ms.is_some()),
            ("max_ms", self.max_ms.is_some()),
            ("alpha", self.alpha.is_some()),
            ("duration_ms", self.duration_ms.is_some()),
            ("new_commands", self.new_commands.is_some()),
            ("response", self.response.is_some()),
            ("interval_ms", self.interval_ms.is_some()),
            ("at_ms", self.at_ms.is_some()),
            ("burst", self.burst.is_some()),
            ("status", self.status.is_some()),
            ("sense_key", self.sense_key.is_some()),
            ("asc", self.asc.is_some()),
            ("ascq", self.ascq.is_some()),
            ("residual", self.residual.is_some()),
            ("event", self.event.is_some()),
            ("reason", self.reason.is_some()),
            ("bytes", self.bytes.is_some()),
        ];
        keys.into_iter().filter(|(_, set)| *set).map(|(k, _)| k)
    }

    /// This fault as a JSON object without the unset keys.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(self).unwrap_or(serde_json::Value::Null);
        if let serde_json::Value::Object(map) = &mut v {
            map.retain(|_, v| !v.is_null());
        }
        v
    }
}

/// A whole plan file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPlan {
    pub(super) seed: Option<u64>,
    pub(super) allow_corruption: Option<bool>,
    #[serde(default)]
    pub(super) fault: Vec<RawFault>,
}
