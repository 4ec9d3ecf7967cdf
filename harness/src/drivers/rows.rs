//! The card's rows: one file per fault in harness/drivers/NAME.toml, in the spirit of the
//! scenario files. A row names the fault (backend `--fault` shorthands, a LU change, faults
//! added when the workload's first data request arrives), what it needs from a driver to
//! reach it, and for every driver the outcome expected, with optional expectations in the
//! scenario language (`scenario::expect`) over the cell's metrics. Placeholders (`{data}`,
//! `{bad}`, `{past_timeout_ms}`) take each driver's [`Profile`]; every expansion is
//! checked by the backend's own parser when the file is loaded.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use flakyhba_backend::faults::plan::line_column;
use flakyhba_backend::faults::FaultSpec;
use serde::Deserialize;
use serde_json::Value;

use super::driver::{DriverId, LuChange, Profile};
use super::outcome::{Need, Outcome};
use crate::scenario::expect::Expectation;
use crate::scenario::file::toml_files;

#[derive(Debug, thiserror::Error)]
pub enum RowError {
    #[error("could not read row file {0}: {1}")]
    CouldNotRead(PathBuf, std::io::Error),
    #[error("could not list the row files in {0}: {1}")]
    CouldNotList(PathBuf, std::io::Error),
    #[error("{file}: {message}")]
    Invalid { file: String, message: String },
    #[error("no row files in {0}")]
    NoRows(PathBuf),
    #[error("no row {name:?} (known: {known})")]
    Unknown { name: String, known: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCell {
    outcome: String,
    #[serde(default)]
    expect: Vec<String>,
    #[serde(default)]
    subset: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRow {
    description: String,
    order: u32,
    needs: Option<String>,
    #[serde(default)]
    faults: Vec<String>,
    lu: Option<String>,
    #[serde(default)]
    at_data: Vec<String>,
    miniport: Option<RawCell>,
    linux: Option<RawCell>,
    seabios: Option<RawCell>,
    ovmf: Option<RawCell>,
}

impl RawRow {
    fn cell(&self, d: DriverId) -> Option<&RawCell> {
        match d {
            DriverId::Miniport => self.miniport.as_ref(),
            DriverId::Linux => self.linux.as_ref(),
            DriverId::Seabios => self.seabios.as_ref(),
            DriverId::Ovmf => self.ovmf.as_ref(),
        }
    }
}

/// What one cell of a row must show.
#[derive(Clone, Debug)]
pub struct CellExpectation {
    pub outcome: Outcome,
    pub expect: Vec<Expectation>,
    /// Part of `make test`'s subset (`--subset`).
    pub subset: bool,
}

#[derive(Clone, Debug)]
pub struct Row {
    pub name: String,
    pub path: PathBuf,
    pub description: String,
    pub order: u32,
    pub need: Option<Need>,
    pub lu: Option<LuChange>,
    faults: Vec<String>,
    at_data: Vec<String>,
    cells: BTreeMap<DriverId, CellExpectation>,
}

/// `text` with every `{name}` replaced by the profile's value.
pub fn expand(text: &str, profile: &Profile) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let close = after
            .find('}')
            .ok_or_else(|| format!("{text:?}: `{{` without `}}`"))?;
        let name = &after[..close];
        let value = profile
            .placeholder(name)
            .ok_or_else(|| format!("{text:?}: unknown placeholder {{{name}}}"))?;
        out.push_str(&value);
        rest = &after[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

impl Row {
    /// The row's `--fault` shorthands for a driver.
    pub fn faults(&self, profile: &Profile) -> Result<Vec<String>, String> {
        self.faults.iter().map(|f| expand(f, profile)).collect()
    }

    /// The faults to add (control socket `add`) at the workload's first data request, as
    /// the JSON objects the backend takes.
    pub fn at_data(&self, profile: &Profile) -> Result<Vec<Value>, String> {
        self.at_data
            .iter()
            .map(|f| {
                let text = expand(f, profile)?;
                let spec = FaultSpec::from_shorthand(&text, false).map_err(|e| e.to_string())?;
                // The keys the fault has; the backend takes no nulls for the others.
                let mut fault = serde_json::to_value(&spec.raw).map_err(|e| e.to_string())?;
                if let Value::Object(keys) = &mut fault {
                    keys.retain(|_, v| !v.is_null());
                }
                Ok(fault)
            })
            .collect()
    }

    pub fn expectation(&self, driver: DriverId) -> &CellExpectation {
        &self.cells[&driver]
    }

    /// Parses and checks the text of `path` (named `NAME.toml`), expanding every fault
    /// for every driver's profile.
    pub fn parse(
        path: &Path,
        text: &str,
        profiles: &[(DriverId, Profile)],
    ) -> Result<Row, RowError> {
        let file = path.display().to_string();
        let invalid = |message: String| RowError::Invalid {
            file: file.clone(),
            message,
        };
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .filter(|s| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            })
            .ok_or_else(|| invalid("a row name may hold only a-z, 0-9 and `-`".into()))?
            .to_owned();
        let raw: RawRow = toml::from_str(text).map_err(|e| {
            let (line, column) = line_column(text, e.span().map_or(0, |s| s.start));
            invalid(format!("{line}:{column}: {}", e.message().trim_end()))
        })?;
        let need = match &raw.needs {
            None => None,
            Some(w) => Some(Need::from_word(w).ok_or_else(|| {
                invalid(format!("needs = {w:?}: expected \"tmf\" or \"events\""))
            })?),
        };
        let lu = match &raw.lu {
            None => None,
            Some(w) => Some(LuChange::from_word(w).ok_or_else(|| {
                invalid(format!(
                    "lu = {w:?}: expected \"add\", \"remove\" or \"resize\""
                ))
            })?),
        };
        let mut cells = BTreeMap::new();
        for d in DriverId::ALL {
            let cell = raw.cell(d).ok_or_else(|| {
                invalid(format!(
                    "no [{d}] table: every driver needs its expected outcome"
                ))
            })?;
            cells.insert(d, parse_cell(d, cell).map_err(invalid)?);
        }
        let row = Row {
            name,
            path: path.to_owned(),
            description: raw.description,
            order: raw.order,
            need,
            lu,
            faults: raw.faults,
            at_data: raw.at_data,
            cells,
        };
        for (d, profile) in profiles {
            for f in row.faults(profile).map_err(&invalid)? {
                FaultSpec::from_shorthand(&f, false)
                    .map_err(|e| invalid(format!("faults, for {d}: {e}")))?;
            }
            // As the backend's `add` will read them.
            for f in row
                .at_data(profile)
                .map_err(|e| invalid(format!("at_data, for {d}: {e}")))?
            {
                FaultSpec::from_json(f, false)
                    .map_err(|e| invalid(format!("at_data, for {d}: {e}")))?;
            }
        }
        Ok(row)
    }

    pub fn load(path: &Path, profiles: &[(DriverId, Profile)]) -> Result<Row, RowError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| RowError::CouldNotRead(path.to_owned(), e))?;
        Row::parse(path, &text, profiles)
    }
}

fn parse_cell(d: DriverId, raw: &RawCell) -> Result<CellExpectation, String> {
    let outcome = Outcome::from_word(&raw.outcome).ok_or_else(|| {
        let words: Vec<_> = Outcome::ALL.iter().map(|o| o.word()).collect();
        format!(
            "[{d}] outcome = {:?}: expected one of {}",
            raw.outcome,
            words.join(", ")
        )
    })?;
    let expect = raw
        .expect
        .iter()
        .enumerate()
        .map(|(i, t)| Expectation::parse(t).map_err(|e| format!("[{d}] expect[{i}] {t:?}: {e}")))
        .collect::<Result<_, _>>()?;
    Ok(CellExpectation {
        outcome,
        expect,
        subset: raw.subset,
    })
}

/// Every `*.toml` of `dir`, in the rows' order; two rows may not share an order.
pub fn load_dir(dir: &Path, profiles: &[(DriverId, Profile)]) -> Result<Vec<Row>, RowError> {
    let paths = toml_files(dir).map_err(|e| RowError::CouldNotList(dir.to_owned(), e))?;
    if paths.is_empty() {
        return Err(RowError::NoRows(dir.to_owned()));
    }
    let mut rows = paths
        .iter()
        .map(|p| Row::load(p, profiles))
        .collect::<Result<Vec<_>, _>>()?;
    rows.sort_by_key(|r| r.order);
    if let Some(w) = rows.windows(2).find(|w| w[0].order == w[1].order) {
        return Err(RowError::Invalid {
            file: w[1].path.display().to_string(),
            message: format!("order = {} is {}'s too", w[1].order, w[0].name),
        });
    }
    Ok(rows)
}

/// The rows named in `only` (all when empty), in the card's order.
pub fn select(rows: Vec<Row>, only: &[String]) -> Result<Vec<Row>, RowError> {
    if let Some(name) = only.iter().find(|n| !rows.iter().any(|r| &r.name == *n)) {
        let known: Vec<_> = rows.iter().map(|r| r.name.as_str()).collect();
        return Err(RowError::Unknown {
            name: name.clone(),
            known: known.join(", "),
        });
    }
    Ok(rows
        .into_iter()
        .filter(|r| only.is_empty() || only.contains(&r.name))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn profiles() -> Vec<(DriverId, Profile)> {
        DriverId::ALL
            .iter()
            .map(|&d| {
                let timeout = (d == DriverId::Linux).then_some(Duration::from_secs(5));
                let p = Profile {
                    data: (100, 199),
                    bad: (116, 123),
                    timeout,
                };
                (d, p)
            })
            .collect()
    }

    const GOOD: &str = r#"
description = "a delay past the driver's timeout"
order = 3
needs = "tmf"
faults = ["delay:lba={data},once=true,delay_ms={past_timeout_ms}"]
at_data = ["spurious-interrupt:queue=request,interval_ms=2,burst=20"]
lu = "resize"

[miniport]
outcome = "survived"
expect = ["guest.srb_timeouts >= 1"]
subset = true

[linux]
outcome = "hung"

[seabios]
outcome = "n/a"

[ovmf]
outcome = "error-reported"
"#;

    fn parse(text: &str) -> Result<Row, RowError> {
        Row::parse(Path::new("drivers/delay.toml"), text, &profiles())
    }

    fn message(text: &str) -> String {
        match parse(text).unwrap_err() {
            RowError::Invalid { file, message } => {
                assert_eq!(file, "drivers/delay.toml");
                message
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_good_row_expands_for_each_driver() {
        let row = parse(GOOD).unwrap();
        assert_eq!((row.name.as_str(), row.order), ("delay", 3));
        assert_eq!(
            (row.need, row.lu),
            (Some(Need::Tmf), Some(LuChange::Resize))
        );
        let p = &profiles();
        let linux = &p[1].1;
        assert_eq!(
            row.faults(linux).unwrap(),
            ["delay:lba=100..199,once=true,delay_ms=7000"]
        );
        assert_eq!(
            row.faults(&p[2].1).unwrap(),
            ["delay:lba=100..199,once=true,delay_ms=3000"]
        );
        let added = row.at_data(linux).unwrap();
        assert_eq!(
            added[0],
            serde_json::json!({"kind": "spurious-interrupt", "queue": "request", "interval_ms": 2, "burst": 20})
        );
        let m = row.expectation(DriverId::Miniport);
        assert_eq!(m.outcome, Outcome::Survived);
        assert!(m.subset);
        assert_eq!(m.expect[0].text(), "guest.srb_timeouts >= 1");
        assert_eq!(
            row.expectation(DriverId::Seabios).outcome,
            Outcome::NotApplicable
        );
        assert!(!row.expectation(DriverId::Ovmf).subset);
    }

    #[test]
    fn mistakes_are_named() {
        let m = message(&GOOD.replace("[ovmf]\noutcome = \"error-reported\"\n", ""));
        assert!(m.contains("no [ovmf] table"), "{m}");
        let m = message(&GOOD.replace("\"n/a\"", "\"skipped\""));
        assert!(m.contains("[seabios] outcome = \"skipped\""), "{m}");
        let m = message(&GOOD.replace("guest.srb_timeouts >= 1", "guest.x = 1"));
        assert!(m.contains("[miniport] expect[0]"), "{m}");
        let m = message(&GOOD.replace("{data}", "{lbas}"));
        assert!(m.contains("unknown placeholder {lbas}"), "{m}");
        let m = message(&GOOD.replace("once=true", "once=maybe"));
        assert!(m.contains("faults, for miniport"), "{m}");
        let m = message(&GOOD.replace("needs = \"tmf\"", "needs = \"irq\""));
        assert!(m.contains("needs = \"irq\""), "{m}");
        let m = message(&GOOD.replace("order = 3", "order = 3\ncolour = 1"));
        assert!(m.starts_with("4:1: unknown field `colour`"), "{m}");
    }

    #[test]
    fn the_shipped_rows_load_in_order() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("drivers");
        let rows = load_dir(&dir, &super::super::profiles()).unwrap();
        assert!(rows.len() >= 15, "{} rows", rows.len());
        assert_eq!(rows[0].name, "baseline");
        assert!(rows.windows(2).all(|w| w[0].order < w[1].order));
        for d in DriverId::ALL {
            let subset = rows.iter().filter(|r| r.expectation(d).subset).count();
            assert!(subset >= 2, "{d}: its baseline and one fault in the subset");
            assert!(rows[0].expectation(d).subset, "{d}: baseline in the subset");
        }
        let only = select(rows.clone(), &["hot-add".into()]).unwrap();
        assert_eq!(only.len(), 1);
        assert!(matches!(
            select(rows, &["nope".into()]),
            Err(RowError::Unknown { .. })
        ));
    }
}
