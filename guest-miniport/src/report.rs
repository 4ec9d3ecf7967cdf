//! JSON-lines report writer for the serial port. The guest has no serde; each line is
//! built field by field over `core::fmt::Write`, with strings escaped per RFC 8259.

use core::fmt::{self, Write};

/// Writes `s` as a JSON string literal, quotes included.
pub fn write_json_str(out: &mut dyn Write, s: &str) -> fmt::Result {
    out.write_char('"')?;
    write_escaped(out, s)?;
    out.write_char('"')
}

/// Writes the body of a JSON string: `s` with quotes, backslashes and control
/// characters escaped.
fn write_escaped(out: &mut dyn Write, s: &str) -> fmt::Result {
    for c in s.chars() {
        match c {
            '"' => out.write_str("\\\"")?,
            '\\' => out.write_str("\\\\")?,
            '\n' => out.write_str("\\n")?,
            '\r' => out.write_str("\\r")?,
            '\t' => out.write_str("\\t")?,
            '\u{08}' => out.write_str("\\b")?,
            '\u{0c}' => out.write_str("\\f")?,
            // Other control characters have no short form.
            c if (c as u32) < 0x20 || c == '\u{7f}' => write!(out, "\\u{:04x}", c as u32)?,
            c => out.write_char(c)?,
        }
    }
    Ok(())
}

/// Escapes everything written through it, so a `Display` value that arrives in
/// several pieces becomes the body of one JSON string.
struct Escaper<'a>(&'a mut dyn Write);

impl Write for Escaper<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_escaped(self.0, s)
    }
}

/// One JSON object on one line: `{"k":v,...}\n`. Fields are written as they are added;
/// [`JsonLine::finish`] closes the object. An error from the sink is kept and returned
/// by `finish`, so callers can chain field calls.
pub struct JsonLine<'a> {
    out: &'a mut dyn Write,
    first: bool,
    result: fmt::Result,
}

impl<'a> JsonLine<'a> {
    /// Starts a line with no fields.
    pub fn new(out: &'a mut dyn Write) -> Self {
        let result = out.write_char('{');
        JsonLine {
            out,
            first: true,
            result,
        }
    }

    /// Starts an event line: `{"event":"<name>"`.
    pub fn event(out: &'a mut dyn Write, name: &str) -> Self {
        let mut line = JsonLine::new(out);
        line.str(crate::contract::REPORT_EVENT_KEY, name);
        line
    }

    fn key(&mut self, key: &str) {
        self.key_display(&key);
    }

    /// A key made by a `Display` value (`interrupts_cpu1`), escaped like a string.
    fn key_display(&mut self, key: &dyn fmt::Display) {
        if self.result.is_err() {
            return;
        }
        if !self.first {
            self.result = self.out.write_char(',');
        }
        self.first = false;
        if self.result.is_ok() {
            self.result = self
                .out
                .write_char('"')
                .and_then(|_| write!(Escaper(&mut *self.out), "{key}"))
                .and_then(|_| self.out.write_str("\":"));
        }
    }

    /// A number under a key made by a `Display` value.
    pub fn u64_keyed(&mut self, key: &dyn fmt::Display, value: u64) -> &mut Self {
        self.key_display(key);
        if self.result.is_ok() {
            self.result = write!(self.out, "{value}");
        }
        self
    }

    pub fn str(&mut self, key: &str, value: &str) -> &mut Self {
        self.key(key);
        if self.result.is_ok() {
            self.result = write_json_str(self.out, value);
        }
        self
    }

    /// A string field from any `Display` value, escaped like [`JsonLine::str`].
    pub fn display(&mut self, key: &str, value: &dyn fmt::Display) -> &mut Self {
        self.key(key);
        if self.result.is_ok() {
            self.result = self
                .out
                .write_char('"')
                .and_then(|_| write!(Escaper(&mut *self.out), "{value}"))
                .and_then(|_| self.out.write_char('"'));
        }
        self
    }

    pub fn u64(&mut self, key: &str, value: u64) -> &mut Self {
        self.key(key);
        if self.result.is_ok() {
            self.result = write!(self.out, "{value}");
        }
        self
    }

    pub fn bool(&mut self, key: &str, value: bool) -> &mut Self {
        self.key(key);
        if self.result.is_ok() {
            self.result = self.out.write_str(if value { "true" } else { "false" });
        }
        self
    }

    /// An array of unsigned numbers.
    pub fn u64_array(&mut self, key: &str, values: &mut dyn Iterator<Item = u64>) -> &mut Self {
        self.key(key);
        if self.result.is_ok() {
            self.result = (|| {
                self.out.write_char('[')?;
                for (i, v) in values.enumerate() {
                    if i > 0 {
                        self.out.write_char(',')?;
                    }
                    write!(self.out, "{v}")?;
                }
                self.out.write_char(']')
            })();
        }
        self
    }

    /// An array of two-number arrays: `[[a,b],...]`.
    pub fn u64_pairs(
        &mut self,
        key: &str,
        values: &mut dyn Iterator<Item = (u64, u64)>,
    ) -> &mut Self {
        self.u64_rows(key, &mut values.map(|(a, b)| [a, b]))
    }

    /// An array of `N`-number arrays: `[[a,b,...],...]`.
    pub fn u64_rows<const N: usize>(
        &mut self,
        key: &str,
        values: &mut dyn Iterator<Item = [u64; N]>,
    ) -> &mut Self {
        self.key(key);
        if self.result.is_ok() {
            self.result = (|| {
                self.out.write_char('[')?;
                for (i, row) in values.enumerate() {
                    if i > 0 {
                        self.out.write_char(',')?;
                    }
                    self.out.write_char('[')?;
                    for (j, v) in row.iter().enumerate() {
                        if j > 0 {
                            self.out.write_char(',')?;
                        }
                        write!(self.out, "{v}")?;
                    }
                    self.out.write_char(']')?;
                }
                self.out.write_char(']')
            })();
        }
        self
    }

    /// The rule checker's violations as an array of objects.
    pub fn violations(
        &mut self,
        key: &str,
        values: &mut dyn Iterator<Item = &crate::port::Violation>,
    ) -> &mut Self {
        use crate::contract::result_fields as rf;
        self.key(key);
        if self.result.is_ok() {
            self.result = (|| {
                self.out.write_char('[')?;
                for (i, v) in values.enumerate() {
                    if i > 0 {
                        self.out.write_char(',')?;
                    }
                    self.out.write_char('{')?;
                    write_json_str(self.out, rf::VIOLATION_RULE)?;
                    self.out.write_char(':')?;
                    write_json_str(self.out, v.rule.id())?;
                    self.out.write_char(',')?;
                    write_json_str(self.out, rf::VIOLATION_ROUTINE)?;
                    self.out.write_char(':')?;
                    write_json_str(self.out, v.routine.name())?;
                    write!(self.out, ",\"{}\":{}", rf::VIOLATION_CPU, v.cpu)?;
                    write!(self.out, ",\"{}\":{},", rf::VIOLATION_TIME_US, v.time_us)?;
                    write_json_str(self.out, rf::VIOLATION_MESSAGE)?;
                    self.out.write_char(':')?;
                    write_json_str(self.out, v.message)?;
                    write!(self.out, ",\"{}\":{}}}", rf::VIOLATION_VALUE, v.value)?;
                }
                self.out.write_char(']')
            })();
        }
        self
    }

    /// Closes the object and ends the line.
    pub fn finish(&mut self) -> fmt::Result {
        if self.result.is_ok() {
            self.result = self.out.write_str("}\n");
        }
        self.result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    extern crate std;
    use std::string::String;

    #[test]
    fn strings_are_escaped() {
        let mut s = String::new();
        write_json_str(&mut s, "a\"b\\c\nd\te\u{1}f\u{7f}é").unwrap();
        assert_eq!(s, "\"a\\\"b\\\\c\\nd\\te\\u0001f\\u007fé\"");
    }

    #[test]
    fn lines_are_one_object_each() {
        let mut s = String::new();
        JsonLine::event(&mut s, "inquiry")
            .str("vendor", "QEMU \"x\"")
            .u64("n", 42)
            .bool("ok", true)
            .u64_array("lbas", &mut [1u64, 2, 3].into_iter())
            .u64_pairs("polls", &mut [(5u64, 1u64), (15, 0)].into_iter())
            .u64_rows("calls", &mut [[1u64, 2, 3], [4, 5, 6]].into_iter())
            .u64_keyed(&format_args!("cpu{}", 1), 7)
            .display("reason", &format_args!("bad {}: \"{}\"", 1, "q\n"))
            .finish()
            .unwrap();
        assert_eq!(
            s,
            "{\"event\":\"inquiry\",\"vendor\":\"QEMU \\\"x\\\"\",\"n\":42,\"ok\":true,\
             \"lbas\":[1,2,3],\"polls\":[[5,1],[15,0]],\"calls\":[[1,2,3],[4,5,6]],\
             \"cpu1\":7,\"reason\":\"bad 1: \\\"q\\n\\\"\"}\n"
        );
        assert_eq!(s.matches('\n').count(), 1);
    }

    #[test]
    fn violations_are_an_array_of_objects() {
        use crate::port::{Routine, Rule, Violation};
        let v = [
            Violation {
                rule: Rule::S1,
                routine: Routine::Timer,
                cpu: 1,
                time_us: 1234,
                message: "StallExecution \"long\"",
                value: 5000,
            },
            Violation {
                rule: Rule::N4,
                routine: Routine::StartIo,
                cpu: 0,
                time_us: 9,
                message: "m",
                value: 0,
            },
        ];
        let mut s = String::new();
        JsonLine::new(&mut s)
            .u64("violations", 2)
            .violations("violation_list", &mut v.iter())
            .finish()
            .unwrap();
        let j: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"violations": 2, "violation_list": [
                {"rule": "S1", "routine": "HwTimer", "cpu": 1, "time_us": 1234,
                 "message": "StallExecution \"long\"", "value": 5000},
                {"rule": "N4", "routine": "HwStartIo", "cpu": 0, "time_us": 9, "message": "m",
                 "value": 0}
            ]})
        );
    }

    #[test]
    fn empty_array_and_empty_object() {
        let mut s = String::new();
        JsonLine::new(&mut s)
            .u64_array("a", &mut core::iter::empty())
            .finish()
            .unwrap();
        assert_eq!(s, "{\"a\":[]}\n");
        let mut s = String::new();
        JsonLine::new(&mut s).finish().unwrap();
        assert_eq!(s, "{}\n");
    }
}
