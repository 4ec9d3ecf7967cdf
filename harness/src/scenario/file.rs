//! Scenario files (harness/scenarios/NAME.toml): a fault plan for the backend, guest
//! arguments, and expectations on the guest's report and the backend's trace, plus an
//! optional negative control. Everything is checked when the file is loaded, with the
//! file, line and column in the message: the guest arguments by the guest's own parser
//! ([`GuestArgs::parse`]), the plan and the `--fault` shorthands by the backend's.
//! docs/scenarios.md describes the format.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flakyhba_backend::faults::{FaultSpec, Plan};
use guest_miniport::contract::{qemu_status_for, ArgError, GuestArgs, EXIT_PASS};
use serde::Deserialize;
use toml::Spanned;

use super::expect::Expectation;

/// Harness deadline of a run when the file gives none.
pub const DEFAULT_TIMEOUT_S: f64 = 20.0;

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("could not read scenario {0}: {1}")]
    CouldNotRead(PathBuf, std::io::Error),
    #[error("could not list the scenarios in {0}: {1}")]
    CouldNotList(PathBuf, std::io::Error),
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{0}: a scenario name may hold only a-z, 0-9, `-` and `_`")]
    BadName(PathBuf),
    #[error("no scenario {name:?} in {dir} (known: {known})")]
    Unknown {
        name: String,
        dir: PathBuf,
        known: String,
    },
    #[error("no scenario files in {0}")]
    NoScenarios(PathBuf),
}

/// A guest argument as written: `irq = "off"`, `irq = false`, `qd = 4`.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
enum ArgValue {
    Bool(bool),
    Int(i64),
    Str(String),
}

impl ArgValue {
    fn word(&self) -> String {
        match self {
            ArgValue::Bool(true) => "on".into(),
            ArgValue::Bool(false) => "off".into(),
            ArgValue::Int(i) => i.to_string(),
            ArgValue::Str(s) => s.clone(),
        }
    }
}

type RawGuest = BTreeMap<Spanned<String>, Spanned<ArgValue>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    faults: Option<Vec<Spanned<String>>>,
    plan: Option<Spanned<String>>,
    seed: Option<u64>,
    luns: Option<Vec<String>>,
    args: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNegative {
    description: Option<String>,
    timeout_s: Option<Spanned<f64>>,
    #[serde(default)]
    guest: RawGuest,
    #[serde(default)]
    backend: RawBackend,
    expect: Spanned<Vec<Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    description: String,
    timeout_s: Option<Spanned<f64>>,
    #[serde(default)]
    long: bool,
    implicit: Option<bool>,
    #[serde(default)]
    guest: RawGuest,
    #[serde(default)]
    backend: RawBackend,
    #[serde(default)]
    expect: Vec<Spanned<String>>,
    negative: Option<RawNegative>,
}

/// What the backend is started with, besides its socket and trace.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct BackendSpec {
    /// Each one a `--fault` shorthand.
    pub faults: Vec<String>,
    /// A plan file's text, written to the run directory and passed as `--fault-plan`.
    pub plan: Option<String>,
    /// `--seed`.
    pub seed: Option<u64>,
    /// `--lun` specs; empty: one sparse image file made by the harness.
    pub luns: Vec<String>,
    /// More arguments, as they are.
    pub args: Vec<String>,
}

impl BackendSpec {
    /// Whether anything can fire: the trace then shows faults.
    pub fn has_faults(&self) -> bool {
        !self.faults.is_empty() || self.plan.is_some()
    }
}

/// One way to run a scenario: the positive run or its negative control.
#[derive(Clone, Debug)]
pub struct Variant {
    pub description: String,
    /// `key=value` words applied over the guest's defaults, in order.
    pub guest: Vec<(String, String)>,
    pub backend: BackendSpec,
    pub expect: Vec<Expectation>,
    pub timeout: Duration,
}

impl Variant {
    /// The guest's arguments with `overrides` applied last. Checked by the guest's
    /// parser, so nothing reaches QEMU that the guest would refuse.
    pub fn guest_args(&self, overrides: &[(String, String)]) -> Result<GuestArgs, String> {
        let line = self
            .guest
            .iter()
            .chain(overrides)
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        GuestArgs::parse(&line).map_err(|e| format!("guest arguments `{line}`: {e}"))
    }
}

#[derive(Clone, Debug)]
pub struct Scenario {
    pub name: String,
    pub path: PathBuf,
    pub long: bool,
    /// Whether the positive run also owes [`implicit_expectations`] (default). `false`
    /// for a plan whose correct outcome is a failure: the file's own expectations say
    /// which, and what the run still owes (explore writes such files).
    pub implicit: bool,
    pub positive: Variant,
    pub negative: Option<Variant>,
}

/// The expectations every positive run has besides its own: QEMU exits with the pass
/// code, the guest says pass, the port's rule checker found nothing, no routine stalled
/// over 1 ms, and the image holds every block the guest wrote.
pub fn implicit_expectations() -> Vec<Expectation> {
    [
        format!("run.qemu_exit == {}", qemu_status_for(EXIT_PASS)),
        r#"guest.result == "pass""#.to_owned(),
        "guest.violations == 0".to_owned(),
        "guest.stall_max_us <= 1000".to_owned(),
        "image.mismatches == 0".to_owned(),
        "image.verified == image.expected".to_owned(),
    ]
    .iter()
    .map(|t| Expectation::parse(t).expect("the implicit expectations parse"))
    .collect()
}

/// What every positive run on several CPUs has as well: the guest ran on the CPUs it
/// was given, its interrupts and the deferred callbacks they asked for (I4) all on the
/// CPU their messages were routed to, and its HwTimer calls all on the timer's. None on
/// one CPU.
pub fn cpu_expectations(args: &GuestArgs) -> Vec<Expectation> {
    if args.cpus <= 1 {
        return Vec::new();
    }
    let (irq, timer) = (
        args.routed_cpu(args.irq_cpu),
        args.routed_cpu(args.timer_cpu),
    );
    [
        format!("guest.cpus == {}", args.cpus),
        format!("guest.interrupts_cpu{irq} == guest.interrupts"),
        format!(
            "guest.deferred_calls_cpu{irq} == guest.enable_callbacks + guest.disable_callbacks"
        ),
        format!("guest.timer_calls_cpu{timer} == guest.timer_calls"),
    ]
    .iter()
    .map(|t| Expectation::parse(t).expect("the CPU expectations parse"))
    .collect()
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

struct Source<'a> {
    file: String,
    text: &'a str,
}

impl Source<'_> {
    fn at(&self, offset: usize, message: String) -> ScenarioError {
        let (line, column) = line_column(self.text, offset);
        ScenarioError::Invalid {
            file: self.file.clone(),
            line,
            column,
            message,
        }
    }

    /// Where the text of a string value starts (after its opening quotes, and after the
    /// newline that a multi-line string drops).
    fn string_start(&self, span: std::ops::Range<usize>) -> usize {
        let raw = &self.text[span.clone()];
        let quotes = if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
            3
        } else {
            1
        };
        let mut start = span.start + quotes;
        if quotes == 3 {
            if self.text[start..].starts_with("\r\n") {
                start += 2;
            } else if self.text[start..].starts_with('\n') {
                start += 1;
            }
        }
        start
    }

    fn expectations(
        &self,
        list: &[Spanned<String>],
        section: &str,
    ) -> Result<Vec<Expectation>, ScenarioError> {
        list.iter()
            .enumerate()
            .map(|(i, e)| {
                Expectation::parse(e.get_ref()).map_err(|err| {
                    // Exact for a string without escapes, close otherwise.
                    let offset = self.string_start(e.span()) + err.column - 1;
                    self.at(
                        offset,
                        format!("{section}[{i}] {:?}: {}", e.get_ref(), err.message),
                    )
                })
            })
            .collect()
    }

    fn guest_words(&self, raw: &RawGuest, section: &str) -> Result<Words, ScenarioError> {
        let mut words = Vec::new();
        for (key, value) in raw {
            let word = format!("{}={}", key.get_ref(), value.get_ref().word());
            // Each word alone through the guest's parser, so the error points at it.
            if let Err(e) = GuestArgs::parse(&word) {
                let span = match e {
                    ArgError::UnknownKey(_) => key.span(),
                    _ => value.span(),
                };
                return Err(self.at(span.start, format!("[{section}] {}: {e}", key.get_ref())));
            }
            words.push((
                key.get_ref().clone(),
                value.get_ref().word(),
                value.span().start,
            ));
        }
        Ok(words)
    }

    fn backend(
        &self,
        raw: &RawBackend,
        base: Option<&BackendSpec>,
        section: &str,
    ) -> Result<BackendSpec, ScenarioError> {
        let mut spec = base.cloned().unwrap_or_default();
        let mut allow_corruption = false;
        if let Some(plan) = &raw.plan {
            let start = self.string_start(plan.span());
            let (line0, _) = line_column(self.text, start);
            match Plan::from_toml_str_named(plan.get_ref(), "plan") {
                Ok(p) => allow_corruption = p.allow_corruption,
                Err(flakyhba_backend::faults::PlanError::Invalid {
                    line,
                    column,
                    message,
                    ..
                }) => {
                    return Err(ScenarioError::Invalid {
                        file: self.file.clone(),
                        line: line0 + line - 1,
                        column,
                        message: format!("[{section}] plan: {message}"),
                    })
                }
                Err(e) => return Err(self.at(start, format!("[{section}] plan: {e}"))),
            }
            spec.plan = Some(plan.get_ref().clone());
        } else if let Some(p) = &spec.plan {
            allow_corruption = Plan::from_toml_str(p).is_ok_and(|p| p.allow_corruption);
        }
        if let Some(faults) = &raw.faults {
            spec.faults = Vec::new();
            for f in faults {
                FaultSpec::from_shorthand(f.get_ref(), allow_corruption)
                    .map_err(|e| self.at(f.span().start, format!("[{section}] faults: {e}")))?;
                spec.faults.push(f.get_ref().clone());
            }
        }
        if raw.seed.is_some() {
            spec.seed = raw.seed;
        }
        if let Some(luns) = &raw.luns {
            spec.luns = luns.clone();
        }
        if let Some(args) = &raw.args {
            spec.args = args.clone();
        }
        Ok(spec)
    }

    fn timeout(&self, raw: Option<&Spanned<f64>>, default: f64) -> Result<f64, ScenarioError> {
        match raw {
            None => Ok(default),
            Some(t) if *t.get_ref() > 0.0 && t.get_ref().is_finite() => Ok(*t.get_ref()),
            Some(t) => Err(self.at(
                t.span().start,
                format!("timeout_s: {} is not a positive number", t.get_ref()),
            )),
        }
    }
}

/// (key, value, offset of the value) of each guest argument.
type Words = Vec<(String, String, usize)>;

fn strip(words: &Words) -> Vec<(String, String)> {
    words
        .iter()
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect()
}

impl Scenario {
    /// Parses and checks the text of `path` (named `NAME.toml`).
    pub fn parse(path: &Path, text: &str) -> Result<Scenario, ScenarioError> {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b))
            })
            .ok_or_else(|| ScenarioError::BadName(path.to_owned()))?
            .to_owned();
        let src = Source {
            file: path.display().to_string(),
            text,
        };
        let raw: RawScenario = toml::from_str(text).map_err(|e| {
            src.at(
                e.span().map_or(0, |s| s.start),
                e.message().trim_end().to_owned(),
            )
        })?;
        let timeout = src.timeout(raw.timeout_s.as_ref(), DEFAULT_TIMEOUT_S)?;
        let guest = src.guest_words(&raw.guest, "guest")?;
        let backend = src.backend(&raw.backend, None, "backend")?;
        let expect = src.expectations(&raw.expect, "expect")?;
        let positive = Variant {
            description: raw.description.clone(),
            guest: strip(&guest),
            backend,
            expect,
            timeout: Duration::from_secs_f64(timeout),
        };
        positive
            .guest_args(&[])
            .map_err(|e| src.at(guest.first().map_or(0, |w| w.2), format!("[guest] {e}")))?;
        let negative = match &raw.negative {
            None => None,
            Some(n) => {
                let extra = src.guest_words(&n.guest, "negative.guest")?;
                let mut words = guest.clone();
                words.extend(extra.iter().cloned());
                let backend =
                    src.backend(&n.backend, Some(&positive.backend), "negative.backend")?;
                if n.expect.get_ref().is_empty() {
                    return Err(src.at(
                        n.expect.span().start,
                        "negative.expect: a negative control needs at least one expectation \
                         (the failure it must show)"
                            .into(),
                    ));
                }
                let variant = Variant {
                    description: n
                        .description
                        .clone()
                        .unwrap_or_else(|| format!("{} (negative control)", raw.description)),
                    guest: strip(&words),
                    backend,
                    expect: src.expectations(n.expect.get_ref(), "negative.expect")?,
                    timeout: Duration::from_secs_f64(src.timeout(n.timeout_s.as_ref(), timeout)?),
                };
                variant.guest_args(&[]).map_err(|e| {
                    src.at(
                        extra.first().map_or(0, |w| w.2),
                        format!("[negative.guest] {e}"),
                    )
                })?;
                Some(variant)
            }
        };
        Ok(Scenario {
            name,
            path: path.to_owned(),
            long: raw.long,
            implicit: raw.implicit.unwrap_or(true),
            positive,
            negative,
        })
    }

    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ScenarioError::CouldNotRead(path.to_owned(), e))?;
        Scenario::parse(path, &text)
    }

    pub fn variants(&self) -> impl Iterator<Item = (bool, &Variant)> {
        std::iter::once((false, &self.positive)).chain(self.negative.iter().map(|n| (true, n)))
    }
}

/// Every `*.toml` of `dir`, by name.
pub fn load_dir(dir: &Path) -> Result<Vec<Scenario>, ScenarioError> {
    let paths = toml_files(dir).map_err(|e| ScenarioError::CouldNotList(dir.to_owned(), e))?;
    if paths.is_empty() {
        return Err(ScenarioError::NoScenarios(dir.to_owned()));
    }
    paths.iter().map(|p| Scenario::load(p)).collect()
}

/// The `*.toml` files of `dir`, sorted by name (also the driver card's row files).
pub fn toml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    Ok(paths)
}

/// `NAME` in `dir`, or a path to a scenario file.
pub fn find(dir: &Path, name_or_file: &str) -> Result<Scenario, ScenarioError> {
    let as_path = Path::new(name_or_file);
    if name_or_file.ends_with(".toml") || name_or_file.contains('/') {
        return Scenario::load(as_path);
    }
    let path = dir.join(format!("{name_or_file}.toml"));
    if path.is_file() {
        return Scenario::load(&path);
    }
    let known = load_dir(dir)
        .map(|all| {
            all.iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    Err(ScenarioError::Unknown {
        name: name_or_file.to_owned(),
        dir: dir.to_owned(),
        known,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use guest_miniport::contract::Workload;

    const GOOD: &str = r#"
description = "every 3rd interrupt dropped"
timeout_s = 5
expect = [
    "guest.completed_by_poll == trace.signals_suppressed_fault",
    "trace.faults.drop-interrupt >= 1",
]

[guest]
workload = "io"
qd = 1
irq = true

[backend]
faults = ["drop-interrupt:every=3,queue=request"]
seed = 7
plan = '''
[[fault]]
kind = "delay"
delay_ms = 1
'''

[negative]
guest = { poll = "off", deadline_ms = 1000 }
expect = ['guest.result == "fail"']
"#;

    fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        Scenario::parse(Path::new("scenarios/drop-every-3.toml"), text)
    }

    fn error(text: &str) -> (usize, usize, String) {
        match parse(text).unwrap_err() {
            ScenarioError::Invalid {
                file,
                line,
                column,
                message,
            } => {
                assert_eq!(file, "scenarios/drop-every-3.toml");
                (line, column, message)
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_good_file_gives_both_variants() {
        let s = parse(GOOD).unwrap();
        assert_eq!(s.name, "drop-every-3");
        assert!(!s.long);
        assert!(s.implicit);
        let own = parse(&GOOD.replace("timeout_s = 5\n", "timeout_s = 5\nimplicit = false\n"));
        assert!(!own.unwrap().implicit);
        let p = &s.positive;
        assert_eq!(p.timeout, Duration::from_secs(5));
        let args = p.guest_args(&[]).unwrap();
        assert_eq!(args.workload, Workload::Io);
        assert_eq!(args.queue_depth, 1);
        assert!(args.irq && args.poll);
        assert_eq!(p.backend.faults, ["drop-interrupt:every=3,queue=request"]);
        assert_eq!(p.backend.seed, Some(7));
        assert!(p.backend.plan.as_deref().unwrap().starts_with("[[fault]]"));
        assert_eq!(p.expect.len(), 2);
        let n = s.negative.as_ref().unwrap();
        let nargs = n.guest_args(&[]).unwrap();
        assert!(!nargs.poll);
        assert_eq!(nargs.deadline_ms, 1000);
        assert_eq!(
            nargs.queue_depth, 1,
            "the positive run's arguments carry over"
        );
        assert_eq!(n.backend, p.backend, "and so does the backend");
        assert_eq!(n.timeout, p.timeout);
        assert_eq!(n.expect[0].text(), r#"guest.result == "fail""#);
        // Overrides come last.
        let over = n.guest_args(&[("seed".into(), "99".into())]).unwrap();
        assert_eq!(over.seed, 99);
        assert_eq!(s.variants().count(), 2);
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let (line, column, message) = error("description = \"x\"\ntimeout = 3\n");
        assert_eq!((line, column), (2, 1));
        assert!(message.contains("unknown field `timeout`"), "{message}");
        let (line, _, message) = error("description = \"x\"\n[backend]\nfault = []\n");
        assert_eq!(line, 3);
        assert!(message.contains("unknown field `fault`"), "{message}");
        let (line, _, message) = error("description = \"x\"\n[negative]\nexpect = []\nirq = 1\n");
        assert_eq!(line, 4);
        assert!(message.contains("unknown field `irq`"), "{message}");
    }

    #[test]
    fn a_bad_guest_argument_is_judged_by_the_guest_parser() {
        let (line, column, message) = error("description = \"x\"\n[guest]\nqd = 0\n");
        assert_eq!((line, column), (3, 6));
        assert_eq!(message, "[guest] qd: bad value \"0\" for qd");
        let (line, column, message) = error("description = \"x\"\n[guest]\nscenario = \"smoke\"\n");
        assert_eq!((line, column), (3, 1));
        assert!(
            message.contains("unknown argument \"scenario\""),
            "{message}"
        );
        let (_, _, message) = error("description = \"x\"\n[guest]\nworkload = \"nope\"\n");
        assert!(message.contains("unknown workload"), "{message}");
        // Only the whole line knows that nothing would complete a request.
        let (line, _, message) =
            error("description = \"x\"\n[guest]\nirq = \"off\"\npoll = \"off\"\n");
        assert_eq!(line, 3);
        assert!(message.contains("poll=off needs irq=on"), "{message}");
        let (line, _, message) = error(
            "description = \"x\"\n[guest]\nirq = \"off\"\n[negative]\nguest = { poll = false }\nexpect = [\"a == 1\"]\n",
        );
        assert_eq!(line, 5);
        assert!(message.starts_with("[negative.guest]"), "{message}");
    }

    #[test]
    fn bad_expectation_syntax_points_into_the_string() {
        let (line, column, message) =
            error("description = \"x\"\nexpect = [\"a == 1\", \"guest.x = 3\"]\n");
        assert_eq!((line, column), (2, 30));
        assert_eq!(
            message,
            "expect[1] \"guest.x = 3\": `=` is not an operator; use `==`"
        );
        let (line, _, message) = error("description = \"x\"\n[negative]\nexpect = [\"a >\"]\n");
        assert_eq!(line, 3);
        assert!(message.starts_with("negative.expect[0]"), "{message}");
        let (_, _, message) = error("description = \"x\"\n[negative]\nexpect = []\n");
        assert!(message.contains("at least one expectation"), "{message}");
    }

    #[test]
    fn plans_and_shorthands_are_checked_by_the_backend() {
        let (line, column, message) = error(
            "description = \"x\"\n[backend]\nplan = '''\n[[fault]]\nkind = \"drop-interrupt\"\nprobability = 1.5\n'''\n",
        );
        assert_eq!((line, column), (6, 1));
        assert!(message.starts_with("[backend] plan: fault #1"), "{message}");
        assert!(message.contains("probability"), "{message}");
        let (line, _, message) =
            error("description = \"x\"\n[backend]\nfaults = [\"drop-interrupt:every=0\"]\n");
        assert_eq!(line, 3);
        assert!(
            message.starts_with("[backend] faults: --fault"),
            "{message}"
        );
    }

    #[test]
    fn names_and_timeouts_are_checked() {
        assert!(matches!(
            Scenario::parse(Path::new("Bad Name.toml"), "description = \"x\"\n"),
            Err(ScenarioError::BadName(_))
        ));
        let (_, _, message) = error("description = \"x\"\ntimeout_s = -1\n");
        assert!(message.contains("not a positive number"), "{message}");
        let s = parse("description = \"x\"\n").unwrap();
        assert_eq!(
            s.positive.timeout,
            Duration::from_secs_f64(DEFAULT_TIMEOUT_S)
        );
        assert!(s.negative.is_none());
    }

    #[test]
    fn the_implicit_expectations_parse() {
        let implicit = implicit_expectations();
        assert_eq!(implicit[0].text(), "run.qemu_exit == 33");
        assert_eq!(implicit.len(), 6);
    }

    #[test]
    fn runs_on_several_cpus_check_where_their_routines_ran() {
        assert!(cpu_expectations(&GuestArgs::default()).is_empty());
        let two = GuestArgs {
            cpus: 2,
            timer_cpu: 1,
            ..GuestArgs::default()
        };
        let texts: Vec<String> = cpu_expectations(&two)
            .iter()
            .map(|e| e.text().to_owned())
            .collect();
        assert_eq!(
            texts,
            [
                "guest.cpus == 2",
                "guest.interrupts_cpu1 == guest.interrupts",
                "guest.deferred_calls_cpu1 == guest.enable_callbacks + guest.disable_callbacks",
                "guest.timer_calls_cpu1 == guest.timer_calls"
            ]
        );
    }

    #[test]
    fn the_shipped_scenarios_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let all = load_dir(&dir).unwrap();
        assert!(all.len() >= 13, "{} scenarios", all.len());
        for s in &all {
            for (_, v) in s.variants() {
                v.guest_args(&[]).unwrap();
            }
        }
        assert!(matches!(
            find(&dir, "no-such-scenario"),
            Err(ScenarioError::Unknown { .. })
        ));
        assert_eq!(find(&dir, "baseline").unwrap().name, "baseline");
    }
}
