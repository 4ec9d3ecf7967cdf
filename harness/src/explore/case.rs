//! One explored case: a fault plan, the guest's arguments and the backend's seed, held
//! as values the generator draws and the shrinker edits. It becomes a plan file's text
//! (checked by the backend's own parser) and a scenario variant the matrix runner runs.

use std::fmt::Write;
use std::time::Duration;

use flakyhba_backend::faults::{Plan, PlanError};
use guest_miniport::contract::{splitmix64, GuestArgs};

use crate::scenario::file::{BackendSpec, Variant};

/// How much longer than the guest's own deadline the harness waits before it kills a
/// run: boot, the result line and the backend's trace.
pub const HARNESS_MARGIN: Duration = Duration::from_secs(5);

/// A value of a plan key, as the plan file writes it.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(u64),
    Float(f64),
    Str(String),
    Bool(bool),
    /// `[a, b]`: `lba` and `window_ms`.
    Pair(u64, u64),
}

impl Value {
    pub fn str(s: &str) -> Value {
        Value::Str(s.to_owned())
    }

    fn render(&self, out: &mut String) {
        let _ = match self {
            Value::Int(i) => write!(out, "{i}"),
            // Debug keeps a decimal point, so TOML reads a float.
            Value::Float(f) => write!(out, "{f:?}"),
            Value::Str(s) => write!(out, "{s:?}"),
            Value::Bool(b) => write!(out, "{b}"),
            Value::Pair(a, b) => write!(out, "[{a}, {b}]"),
        };
    }

    pub fn as_int(&self) -> Option<u64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
}

/// One `[[fault]]` table: its kind and its other keys, in order.
#[derive(Clone, Debug, PartialEq)]
pub struct FaultTable {
    pub kind: &'static str,
    pub keys: Vec<(&'static str, Value)>,
}

impl FaultTable {
    pub fn new(kind: &'static str) -> FaultTable {
        FaultTable {
            kind,
            keys: Vec::new(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.keys.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }

    /// Sets `key`, in place when it is there, else at the end.
    pub fn set(&mut self, key: &'static str, value: Value) {
        match self.keys.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.keys.push((key, value)),
        }
    }

    pub fn remove(&mut self, key: &str) -> Option<Value> {
        let at = self.keys.iter().position(|(k, _)| *k == key)?;
        Some(self.keys.remove(at).1)
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(out, "[[fault]]\nkind = {:?}", self.kind);
        for (k, v) in &self.keys {
            let _ = write!(out, "{k} = ");
            v.render(out);
            out.push('\n');
        }
    }
}

/// A plan, the guest's arguments (a planted bug among them) and the backend's seed.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    pub faults: Vec<FaultTable>,
    pub guest: GuestArgs,
    pub seed: u64,
    pub allow_corruption: bool,
}

impl Case {
    /// The plan file's text (no seed: the backend gets `--seed`).
    pub fn plan_text(&self) -> String {
        let mut out = String::new();
        if self.allow_corruption {
            out.push_str("allow_corruption = true\n");
        }
        for (i, f) in self.faults.iter().enumerate() {
            if i > 0 || self.allow_corruption {
                out.push('\n');
            }
            f.render(&mut out);
        }
        out
    }

    /// The plan as the backend reads it.
    pub fn plan(&self) -> Result<Plan, PlanError> {
        Plan::from_toml_str(&self.plan_text())
    }

    /// The guest's arguments as `key=value` words, in the kernel command line's order.
    pub fn guest_words(&self) -> Vec<(String, String)> {
        self.guest
            .to_string()
            .split_ascii_whitespace()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// How long the harness lets the run take before it kills it.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.guest.deadline_ms)) + HARNESS_MARGIN
    }

    /// The scenario variant that runs this case, with no expectations of its own: the
    /// explorer judges with its oracle.
    pub fn variant(&self, description: &str) -> Variant {
        Variant {
            description: description.to_owned(),
            guest: self.guest_words(),
            backend: BackendSpec {
                faults: Vec::new(),
                plan: (!self.faults.is_empty()).then(|| self.plan_text()),
                seed: Some(self.seed),
                luns: Vec::new(),
                args: Vec::new(),
            },
            expect: Vec::new(),
            timeout: self.timeout(),
        }
    }

    /// A short name for the case: the same plan, arguments and seed give the same one.
    pub fn short_hash(&self) -> String {
        let text = format!("{}\n{}\nseed={}", self.plan_text(), self.guest, self.seed);
        let h = text.bytes().fold(0x6a09_e667_f3bc_c908u64, |h, b| {
            splitmix64(h ^ u64::from(b))
        });
        format!("{:010x}", h >> 24)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case() -> Case {
        let mut f = FaultTable::new("status");
        f.set("status", Value::str("busy"));
        f.set("lba", Value::Pair(0, 99));
        f.set("probability", Value::Float(0.25));
        let mut g = FaultTable::new("drop-interrupt");
        g.set("every", Value::Int(3));
        g.set("once", Value::Bool(true));
        Case {
            faults: vec![f, g],
            guest: GuestArgs::default(),
            seed: 7,
            allow_corruption: false,
        }
    }

    #[test]
    fn a_case_renders_a_plan_the_backend_accepts() {
        let c = case();
        assert_eq!(
            c.plan_text(),
            "[[fault]]\nkind = \"status\"\nstatus = \"busy\"\nlba = [0, 99]\nprobability = 0.25\n\n\
             [[fault]]\nkind = \"drop-interrupt\"\nevery = 3\nonce = true\n"
        );
        let plan = c.plan().unwrap();
        assert_eq!(plan.faults.len(), 2);
        assert_eq!(plan.faults[1].trigger.times, Some(1));
    }

    #[test]
    fn keys_are_set_in_place_and_removed() {
        let mut f = case().faults.remove(0);
        f.set("lba", Value::Pair(5, 6));
        assert_eq!(f.keys[1], ("lba", Value::Pair(5, 6)));
        assert_eq!(f.remove("probability"), Some(Value::Float(0.25)));
        assert_eq!(f.remove("probability"), None);
        assert_eq!(f.get("status"), Some(&Value::str("busy")));
    }

    #[test]
    fn the_variant_carries_the_plan_seed_and_arguments() {
        let c = case();
        let v = c.variant("x");
        assert_eq!(v.backend.seed, Some(7));
        assert_eq!(v.guest_args(&[]).unwrap(), c.guest);
        assert_eq!(v.timeout, Duration::from_secs(65));
        assert!(v.expect.is_empty());
    }

    #[test]
    fn the_short_hash_names_the_case() {
        let a = case();
        let mut b = case();
        assert_eq!(a.short_hash(), b.short_hash());
        assert_eq!(a.short_hash().len(), 10);
        b.seed = 8;
        assert_ne!(a.short_hash(), b.short_hash());
    }
}
