//! Expectations of a scenario: `OPERAND OP OPERAND` over the run's metrics, with
//! alternatives joined by `||`. An operand is a metric path, a number, a quoted string,
//! `true`/`false`, a list `[1, 2]`, or a sum `a + b` of numbers. Lists compare as sets
//! (`==`, `!=`; `<=`/`>=` are subset/superset, `<`/`>` proper ones). A metric that does
//! not exist fails the expectation; it never passes silently. docs/scenarios.md is the
//! user's reference.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Number, Value};

/// The metrics of one run, by path (`guest.completed_by_poll`, `trace.signals`, ...).
pub type Metrics = BTreeMap<String, Value>;

/// Suffix that turns a list metric into its length (`guest.lbas.len`).
pub const LEN_SUFFIX: &str = ".len";
/// How many list elements a message shows.
const SHOWN_ELEMENTS: usize = 24;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct SyntaxError {
    /// 1-based column (in characters) inside the expectation text.
    pub column: usize,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// `~=`: a string holds a substring, or a list holds an element.
    Contains,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Eq => "==",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Contains => "~=",
        }
    }

    fn holds(self, ord: Ordering) -> bool {
        match self {
            Op::Eq => ord == Ordering::Equal,
            Op::Ne => ord != Ordering::Equal,
            Op::Lt => ord == Ordering::Less,
            Op::Le => ord != Ordering::Greater,
            Op::Gt => ord == Ordering::Greater,
            Op::Ge => ord != Ordering::Less,
            Op::Contains => false,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Term {
    Metric(String),
    Literal(Value),
}

/// One side of a comparison: one term, or the sum of several.
#[derive(Clone, Debug, PartialEq)]
struct Operand(Vec<Term>);

#[derive(Clone, Debug, PartialEq)]
struct Comparison {
    left: Operand,
    op: Op,
    right: Operand,
}

/// A parsed expectation.
#[derive(Clone, Debug, PartialEq)]
pub struct Expectation {
    text: String,
    alternatives: Vec<Comparison>,
}

/// An expectation judged against one run's metrics.
#[derive(Clone, Debug, PartialEq)]
pub struct Judged {
    pub text: String,
    pub passed: bool,
    /// Every metric the expectation names, with its value (None: missing).
    pub observed: Vec<(String, Option<Value>)>,
    /// Why it failed, when it could not be judged at all (a type mismatch).
    pub problem: Option<String>,
}

impl Judged {
    /// `expectation "A == B" failed: A = 12, B = 13`.
    pub fn failure_message(&self) -> String {
        let mut msg = format!("expectation {:?} failed: ", self.text);
        let observed: Vec<String> = self
            .observed
            .iter()
            .map(|(path, v)| format!("{path} = {}", show(v.as_ref())))
            .collect();
        if observed.is_empty() {
            msg.push_str("(no metrics)");
        } else {
            msg.push_str(&observed.join(", "));
        }
        if let Some(p) = &self.problem {
            msg.push_str(&format!(" ({p})"));
        }
        msg
    }
}

/// A value as messages show it; lists are cut after a few elements.
pub fn show(value: Option<&Value>) -> String {
    match value {
        None => "(missing)".to_owned(),
        Some(Value::Array(items)) if items.len() > SHOWN_ELEMENTS => {
            let head: Vec<String> = items[..SHOWN_ELEMENTS]
                .iter()
                .map(Value::to_string)
                .collect();
            format!("[{}, ... ({} in all)]", head.join(", "), items.len())
        }
        Some(v) => v.to_string(),
    }
}

/// The value of `path`: the metric itself, or for `X.len` the length of list `X`.
pub fn lookup(metrics: &Metrics, path: &str) -> Option<Value> {
    if let Some(v) = metrics.get(path) {
        return Some(v.clone());
    }
    let base = path.strip_suffix(LEN_SUFFIX)?;
    match metrics.get(base)? {
        Value::Array(items) => Some(Value::from(items.len())),
        _ => None,
    }
}

impl Expectation {
    pub fn parse(text: &str) -> Result<Expectation, SyntaxError> {
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens: &tokens,
            at: 0,
            end_column: text.chars().count() + 1,
        };
        let mut alternatives = vec![p.comparison()?];
        while p.eat(&Tok::Or) {
            alternatives.push(p.comparison()?);
        }
        if let Some((_, column)) = p.tokens.get(p.at) {
            return Err(SyntaxError {
                column: *column,
                message: "expected `||` or the end of the expectation".into(),
            });
        }
        Ok(Expectation {
            text: text.to_owned(),
            alternatives,
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    /// The metric paths the expectation names, in order, each once.
    pub fn metric_paths(&self) -> Vec<&str> {
        let mut paths: Vec<&str> = Vec::new();
        for c in &self.alternatives {
            for term in c.left.0.iter().chain(&c.right.0) {
                if let Term::Metric(p) = term {
                    if !paths.contains(&p.as_str()) {
                        paths.push(p);
                    }
                }
            }
        }
        paths
    }

    pub fn judge(&self, metrics: &Metrics) -> Judged {
        let observed: Vec<(String, Option<Value>)> = self
            .metric_paths()
            .into_iter()
            .map(|p| (p.to_owned(), lookup(metrics, p)))
            .collect();
        let mut problems = Vec::new();
        let mut passed = false;
        for c in &self.alternatives {
            match c.evaluate(metrics) {
                Ok(true) => passed = true,
                Ok(false) => {}
                Err(Problem::Missing) => {}
                Err(Problem::Type(p)) => problems.push(p),
            }
        }
        Judged {
            text: self.text.clone(),
            passed,
            observed,
            problem: (!passed && !problems.is_empty()).then(|| problems.join("; ")),
        }
    }
}

impl fmt::Display for Expectation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

enum Problem {
    Missing,
    Type(String),
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

impl Operand {
    fn value(&self, metrics: &Metrics) -> Result<Value, Problem> {
        let values: Vec<Value> = self
            .0
            .iter()
            .map(|t| match t {
                Term::Metric(p) => lookup(metrics, p).ok_or(Problem::Missing),
                Term::Literal(v) => Ok(v.clone()),
            })
            .collect::<Result<_, _>>()?;
        if values.len() == 1 {
            return Ok(values.into_iter().next().expect("one value"));
        }
        let mut int: Option<i128> = Some(0);
        let mut float = 0.0f64;
        for v in &values {
            let Value::Number(n) = v else {
                return Err(Problem::Type(format!("cannot add {}", kind(v))));
            };
            int = int.and_then(|sum| Some(sum + as_int(n)?));
            float += n.as_f64().unwrap_or(f64::NAN);
        }
        Ok(match int.and_then(|i| i64::try_from(i).ok()) {
            Some(i) => Value::from(i),
            None => Number::from_f64(float).map_or(Value::Null, Value::Number),
        })
    }
}

fn as_int(n: &Number) -> Option<i128> {
    n.as_i64()
        .map(i128::from)
        .or_else(|| n.as_u64().map(i128::from))
}

fn compare_numbers(a: &Number, b: &Number) -> Option<Ordering> {
    match (as_int(a), as_int(b)) {
        (Some(x), Some(y)) => Some(x.cmp(&y)),
        _ => a.as_f64()?.partial_cmp(&b.as_f64()?),
    }
}

/// Elements of a list as a set, by their JSON text (numbers compare by value).
fn as_set(items: &[Value]) -> std::collections::BTreeSet<String> {
    items
        .iter()
        .map(|v| match v {
            Value::Number(n) => match as_int(n) {
                Some(i) => i.to_string(),
                None => n.to_string(),
            },
            v => v.to_string(),
        })
        .collect()
}

impl Comparison {
    fn evaluate(&self, metrics: &Metrics) -> Result<bool, Problem> {
        let left = self.left.value(metrics)?;
        let right = self.right.value(metrics)?;
        let op = self.op;
        let mismatch = || {
            Problem::Type(format!(
                "cannot compare {} with {} using {}",
                kind(&left),
                kind(&right),
                op.symbol()
            ))
        };
        match (&left, &right) {
            (Value::String(a), Value::String(b)) if op == Op::Contains => {
                Ok(a.contains(b.as_str()))
            }
            (Value::Array(a), b) if op == Op::Contains && !b.is_array() => {
                Ok(as_set(a).is_superset(&as_set(std::slice::from_ref(b))))
            }
            (Value::Array(_), Value::Array(_)) | (_, _) if op == Op::Contains => {
                match (&left, &right) {
                    (Value::Array(a), Value::Array(b)) => Ok(as_set(a).is_superset(&as_set(b))),
                    _ => Err(mismatch()),
                }
            }
            (Value::Number(a), Value::Number(b)) => {
                Ok(compare_numbers(a, b).is_some_and(|o| op.holds(o)))
            }
            (Value::Array(a), Value::Array(b)) => {
                let (a, b) = (as_set(a), as_set(b));
                Ok(match op {
                    Op::Eq => a == b,
                    Op::Ne => a != b,
                    Op::Le => a.is_subset(&b),
                    Op::Lt => a.is_subset(&b) && a != b,
                    Op::Ge => a.is_superset(&b),
                    Op::Gt => a.is_superset(&b) && a != b,
                    Op::Contains => a.is_superset(&b),
                })
            }
            (Value::String(_), Value::String(_)) | (Value::Bool(_), Value::Bool(_)) => match op {
                Op::Eq => Ok(left == right),
                Op::Ne => Ok(left != right),
                _ => Err(mismatch()),
            },
            _ => Err(mismatch()),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Path(String),
    Literal(Value),
    Op(Op),
    Plus,
    Or,
    Open,
    Close,
    Comma,
}

fn syntax(column: usize, message: impl Into<String>) -> SyntaxError {
    SyntaxError {
        column,
        message: message.into(),
    }
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// Tokens with their 1-based columns.
fn lex(text: &str) -> Result<Vec<(Tok, usize)>, SyntaxError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let column = i + 1;
        let next = chars.get(i + 1).copied();
        let (tok, len) = match c {
            ' ' | '\t' => {
                i += 1;
                continue;
            }
            '=' if next == Some('=') => (Tok::Op(Op::Eq), 2),
            '!' if next == Some('=') => (Tok::Op(Op::Ne), 2),
            '<' if next == Some('=') => (Tok::Op(Op::Le), 2),
            '>' if next == Some('=') => (Tok::Op(Op::Ge), 2),
            '<' => (Tok::Op(Op::Lt), 1),
            '>' => (Tok::Op(Op::Gt), 1),
            '~' if next == Some('=') => (Tok::Op(Op::Contains), 2),
            '|' if next == Some('|') => (Tok::Or, 2),
            '+' => (Tok::Plus, 1),
            '[' => (Tok::Open, 1),
            ']' => (Tok::Close, 1),
            ',' => (Tok::Comma, 1),
            '=' => return Err(syntax(column, "`=` is not an operator; use `==`")),
            '"' => {
                let mut s = String::new();
                let mut j = i + 1;
                loop {
                    match chars.get(j) {
                        None => return Err(syntax(column, "unterminated string")),
                        Some('"') => break,
                        Some('\\') => {
                            match chars.get(j + 1) {
                                Some(&e @ ('"' | '\\')) => s.push(e),
                                _ => return Err(syntax(j + 1, "only \\\" and \\\\ are escapes")),
                            }
                            j += 2;
                            continue;
                        }
                        Some(&ch) => s.push(ch),
                    }
                    j += 1;
                }
                (Tok::Literal(Value::String(s)), j + 1 - i)
            }
            c if c.is_ascii_digit() || (c == '-' && next.is_some_and(|n| n.is_ascii_digit())) => {
                let mut j = i + 1;
                while j < chars.len() && (chars[j].is_ascii_alphanumeric() || chars[j] == '.') {
                    j += 1;
                }
                let word: String = chars[i..j].iter().collect();
                (Tok::Literal(number(&word, column)?), j - i)
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut j = i + 1;
                while j < chars.len() && is_path_char(chars[j]) {
                    j += 1;
                }
                let word: String = chars[i..j].iter().collect();
                let tok = match word.as_str() {
                    "true" => Tok::Literal(Value::Bool(true)),
                    "false" => Tok::Literal(Value::Bool(false)),
                    _ if word.ends_with('.') => {
                        return Err(syntax(
                            column,
                            format!("metric path {word:?} ends with `.`"),
                        ))
                    }
                    _ => Tok::Path(word),
                };
                (tok, j - i)
            }
            c => return Err(syntax(column, format!("unexpected {c:?}"))),
        };
        out.push((tok, column));
        i += len;
    }
    Ok(out)
}

fn number(word: &str, column: usize) -> Result<Value, SyntaxError> {
    let bad = || syntax(column, format!("{word:?} is not a number"));
    if let Some(hex) = word.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16)
            .map(Value::from)
            .map_err(|_| bad());
    }
    if let Ok(i) = word.parse::<i64>() {
        return Ok(Value::from(i));
    }
    if let Ok(u) = word.parse::<u64>() {
        return Ok(Value::from(u));
    }
    word.parse::<f64>()
        .ok()
        .and_then(Number::from_f64)
        .map(Value::Number)
        .ok_or_else(bad)
}

struct Parser<'a> {
    tokens: &'a [(Tok, usize)],
    at: usize,
    end_column: usize,
}

impl Parser<'_> {
    fn column(&self) -> usize {
        self.tokens.get(self.at).map_or(self.end_column, |t| t.1)
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.tokens.get(self.at).is_some_and(|t| &t.0 == tok) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn comparison(&mut self) -> Result<Comparison, SyntaxError> {
        let left = self.operand()?;
        let op = match self.tokens.get(self.at) {
            Some((Tok::Op(op), _)) => *op,
            _ => {
                return Err(syntax(
                    self.column(),
                    "expected an operator (== != < <= > >=)",
                ))
            }
        };
        self.at += 1;
        let right = self.operand()?;
        Ok(Comparison { left, op, right })
    }

    fn operand(&mut self) -> Result<Operand, SyntaxError> {
        let mut terms = vec![self.term()?];
        while self.eat(&Tok::Plus) {
            let column = self.column();
            let term = self.term()?;
            if matches!(&term, Term::Literal(v) if !v.is_number()) {
                return Err(syntax(column, "only numbers can be added"));
            }
            terms.push(term);
        }
        if terms.len() > 1 {
            if let Term::Literal(v) = &terms[0] {
                if !v.is_number() {
                    return Err(syntax(
                        self.tokens[self.at - 1].1,
                        "only numbers can be added",
                    ));
                }
            }
        }
        Ok(Operand(terms))
    }

    fn term(&mut self) -> Result<Term, SyntaxError> {
        let column = self.column();
        let Some((tok, _)) = self.tokens.get(self.at) else {
            return Err(syntax(column, "expected an operand"));
        };
        self.at += 1;
        match tok {
            Tok::Path(p) => Ok(Term::Metric(p.clone())),
            Tok::Literal(v) => Ok(Term::Literal(v.clone())),
            Tok::Open => {
                let mut items = Vec::new();
                if self.eat(&Tok::Close) {
                    return Ok(Term::Literal(Value::Array(items)));
                }
                loop {
                    match self.tokens.get(self.at) {
                        Some((Tok::Literal(v), _)) => items.push(v.clone()),
                        _ => return Err(syntax(self.column(), "a list holds only literals")),
                    }
                    self.at += 1;
                    if self.eat(&Tok::Close) {
                        return Ok(Term::Literal(Value::Array(items)));
                    }
                    if !self.eat(&Tok::Comma) {
                        return Err(syntax(self.column(), "expected `,` or `]`"));
                    }
                }
            }
            _ => Err(syntax(column, "expected an operand")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn metrics() -> Metrics {
        let mut m = Metrics::new();
        m.insert("guest.completed_by_poll".into(), json!(12));
        m.insert("trace.signals_suppressed_fault".into(), json!(13));
        m.insert("guest.result".into(), json!("pass"));
        m.insert("guest.irq".into(), json!(true));
        m.insert("guest.polled_ids".into(), json!([5, 3, 9]));
        m.insert("trace.suppressed_fault_ids".into(), json!([3, 5, 9, 9]));
        m.insert("trace.ids".into(), json!([3, 5, 9, 11]));
        m.insert("trace.tmf.lu-reset.min_ms".into(), json!(3000.5));
        m.insert("a".into(), json!(2));
        m.insert("b".into(), json!(3));
        m.insert(
            "guest.reason".into(),
            json!("data read back from lba 7 differs"),
        );
        m
    }

    #[test]
    fn contains_looks_into_strings_and_lists() {
        assert!(check(r#"guest.reason ~= "differs""#));
        assert!(!check(r#"guest.reason ~= "timeout""#));
        assert!(check("trace.ids ~= 11"));
        assert!(!check("trace.ids ~= 4"));
        assert!(check("trace.ids ~= guest.polled_ids"));
        assert!(!check("guest.polled_ids ~= trace.ids"));
        for text in ["a ~= 2", "guest.irq ~= true", r#"a ~= "2""#] {
            let judged = Expectation::parse(text).unwrap().judge(&metrics());
            assert!(!judged.passed, "{text}");
            assert!(
                judged.failure_message().contains("cannot compare"),
                "{text}: {}",
                judged.failure_message()
            );
        }
    }

    fn check(text: &str) -> bool {
        let judged = Expectation::parse(text).unwrap().judge(&metrics());
        judged.passed
    }

    #[test]
    fn each_operator_on_numbers() {
        for (text, want) in [
            ("a == 2", true),
            ("a == 3", false),
            ("a != 3", true),
            ("a != 2", false),
            ("a < 3", true),
            ("a < 2", false),
            ("a <= 2", true),
            ("a <= 1", false),
            ("a > 1", true),
            ("a > 2", false),
            ("a >= 2", true),
            ("a >= 2.5", false),
            ("trace.tmf.lu-reset.min_ms >= 3000", true),
            ("trace.tmf.lu-reset.min_ms > 3000.5", false),
            ("a == 0x2", true),
            ("-1 < a", true),
        ] {
            assert_eq!(check(text), want, "{text}");
        }
    }

    #[test]
    fn sums_add_metrics_and_numbers() {
        assert!(check("a + b == 5"));
        assert!(check("a + b + 1 == 6"));
        assert!(check(
            "guest.completed_by_poll + 1 == trace.signals_suppressed_fault"
        ));
        assert!(!check("a + b > 5"));
        assert!(check("a + 0.5 == 2.5"));
        let judged = Expectation::parse("a + guest.result == 1")
            .unwrap()
            .judge(&metrics());
        assert!(!judged.passed);
        assert!(
            judged.failure_message().contains("(cannot add a string)"),
            "{}",
            judged.failure_message()
        );
    }

    #[test]
    fn strings_and_bools_compare_for_equality_only() {
        assert!(check(r#"guest.result == "pass""#));
        assert!(check(r#"guest.result != "fail""#));
        assert!(check("guest.irq == true"));
        assert!(!check("guest.irq == false"));
        let judged = Expectation::parse(r#"guest.result < "z""#)
            .unwrap()
            .judge(&metrics());
        assert!(!judged.passed);
        assert!(judged.problem.unwrap().contains("cannot compare a string"));
        // Different types never compare.
        assert!(!check(r#"a == "2""#));
    }

    #[test]
    fn lists_compare_as_sets() {
        assert!(check("guest.polled_ids == trace.suppressed_fault_ids"));
        assert!(check("guest.polled_ids == [9, 5, 3]"));
        assert!(!check("guest.polled_ids != [3, 5, 9]"));
        assert!(check("guest.polled_ids <= trace.ids"));
        assert!(check("guest.polled_ids < trace.ids"));
        assert!(!check("guest.polled_ids < trace.suppressed_fault_ids"));
        assert!(check("trace.ids >= guest.polled_ids"));
        assert!(check("trace.ids > guest.polled_ids"));
        assert!(!check("guest.polled_ids >= trace.ids"));
        assert!(check("guest.polled_ids.len == 3"));
        assert!(check("trace.suppressed_fault_ids.len == 4"));
        assert!(check("[] == []"));
    }

    #[test]
    fn a_missing_metric_fails_and_is_named() {
        let judged = Expectation::parse("guest.nothing == 0")
            .unwrap()
            .judge(&metrics());
        assert!(!judged.passed);
        assert_eq!(
            judged.failure_message(),
            r#"expectation "guest.nothing == 0" failed: guest.nothing = (missing)"#
        );
        // Even `!=` does not pass on a missing metric.
        assert!(!check("guest.nothing != 0"));
        assert!(!check("a.len == 0"), "a number has no length");
    }

    #[test]
    fn alternatives_pass_when_any_does() {
        assert!(check("guest.nothing >= 1 || a == 2"));
        assert!(check("a == 3 || b == 3"));
        assert!(!check("a == 3 || b == 4"));
    }

    #[test]
    fn the_message_names_the_expectation_and_every_observed_value() {
        let judged =
            Expectation::parse("guest.completed_by_poll == trace.signals_suppressed_fault")
                .unwrap()
                .judge(&metrics());
        assert!(!judged.passed);
        assert_eq!(
            judged.failure_message(),
            "expectation \"guest.completed_by_poll == trace.signals_suppressed_fault\" failed: \
             guest.completed_by_poll = 12, trace.signals_suppressed_fault = 13"
        );
        let long: Vec<u32> = (0..30).collect();
        let shown = show(Some(&json!(long)));
        assert!(shown.ends_with(", ... (30 in all)]"), "{shown}");
    }

    #[test]
    fn bad_syntax_names_the_column() {
        for (text, column, part) in [
            ("a = 2", 3, "use `==`"),
            ("a 2", 3, "expected an operator"),
            ("a ==", 5, "expected an operand"),
            ("== 2", 1, "expected an operand"),
            ("a == 2 b", 8, "expected `||`"),
            (r#"a == "open"#, 6, "unterminated string"),
            ("a == 12x", 6, "not a number"),
            ("a == [b]", 7, "only literals"),
            (r#"a + "s" == 1"#, 5, "only numbers can be added"),
            ("a == 2 ||", 10, "expected an operand"),
            ("a. == 2", 1, "ends with `.`"),
            ("a == 2 & b", 8, "unexpected '&'"),
        ] {
            let err = Expectation::parse(text).unwrap_err();
            assert_eq!(err.column, column, "{text}: {err}");
            assert!(err.message.contains(part), "{text}: {err}");
        }
    }

    #[test]
    fn metric_paths_are_listed_once_in_order() {
        let e = Expectation::parse("b + a == a || c > 1").unwrap();
        assert_eq!(e.metric_paths(), ["b", "a", "c"]);
    }
}
