//! The card's reports: a progress line per cell, the table in the terminal, a Markdown
//! report (the table, what each cell showed, the versions) and a JSON one (every cell),
//! written into the card's output directory (`target/drivers` by default).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::card::Card;
use super::cell::CellRecord;
use super::driver::DriverId;
use super::rows::Row;

/// Marks a cell whose outcome or expectations differ from its row file.
const DIFFERS: &str = " !";

/// `[ 3/60] baseline × seabios: survived (expected survived) 0.8 s`.
pub fn progress_line(done: usize, total: usize, cell: &CellRecord) -> String {
    let outcome = cell.outcome.map_or("error", |o| o.word());
    let mark = if cell.passed() { "" } else { DIFFERS };
    format!(
        "[{done:>2}/{total}] {} × {}: {outcome}{mark} (expected {}) {:.1} s",
        cell.row,
        cell.driver,
        cell.expected,
        cell.wall.as_secs_f64()
    )
}

/// The rows with a cell that ran (a subset leaves some out).
fn shown_rows(card: &Card) -> impl Iterator<Item = &Row> {
    card.rows
        .iter()
        .filter(|r| card.cells.iter().any(|c| c.row == r.name))
}

fn cell_word(card: &Card, row: &str, d: DriverId) -> String {
    match card.cell(row, d) {
        None => "-".into(),
        Some(c) => {
            let word = c.outcome.map_or("error", |o| o.word());
            let mark = if c.passed() { "" } else { DIFFERS };
            format!("{word}{mark}")
        }
    }
}

/// The table for the terminal, then every cell that differs from its row file.
pub fn terminal(card: &Card) -> String {
    let width = shown_rows(card)
        .map(|r| r.name.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut out = format!("{:width$}", "fault");
    for d in &card.drivers {
        let _ = write!(out, "  {:16}", d.name());
    }
    out.push('\n');
    for r in shown_rows(card) {
        let _ = write!(out, "{:width$}", r.name);
        for &d in &card.drivers {
            let _ = write!(out, "  {:16}", cell_word(card, &r.name, d));
        }
        out.push('\n');
    }
    for c in card.cells.iter().filter(|c| !c.passed()) {
        let _ = writeln!(out, "{} × {} ({}):", c.row, c.driver, c.dir.display());
        for p in c.problems() {
            let _ = writeln!(out, "    {p}");
        }
        let _ = writeln!(out, "    why: {}", c.reason);
    }
    let verdict = if card.interrupted {
        "INTERRUPTED"
    } else if card.passed() {
        "PASS"
    } else {
        "FAIL"
    };
    let differ = card.cells.iter().filter(|c| !c.passed()).count();
    let _ = writeln!(
        out,
        "drivers: {verdict}: {} cells, {differ} differ from their row files, wall {:.0} s",
        card.cells.len(),
        card.wall.as_secs_f64()
    );
    out
}

/// The Markdown report: the table, what each cell showed, the versions.
pub fn markdown(card: &Card) -> String {
    let mut out = String::from("# Driver card\n\n");
    let _ = writeln!(
        out,
        "{} cells{} under TCG in {:.0} s{}. `!` marks a cell that differs from its row \
         file in harness/drivers/.\n",
        card.cells.len(),
        if card.subset {
            " (the `make test` subset)"
        } else {
            ""
        },
        card.wall.as_secs_f64(),
        if card.interrupted {
            ", interrupted"
        } else {
            ""
        }
    );
    out.push_str("| driver | version |\n|---|---|\n");
    for (what, v) in card.versions.lines() {
        let _ = writeln!(out, "| {what} | {v} |");
    }
    out.push_str("\n| fault |");
    for d in &card.drivers {
        let _ = write!(out, " {} |", d.title());
    }
    out.push_str("\n|---|");
    out.push_str(&"---|".repeat(card.drivers.len()));
    out.push('\n');
    for r in shown_rows(card) {
        let _ = write!(out, "| `{}`: {} |", r.name, r.description);
        for &d in &card.drivers {
            let _ = write!(out, " {} |", cell_word(card, &r.name, d));
        }
        out.push('\n');
    }
    out.push_str("\n## What each cell showed\n");
    for r in &card.rows {
        let cells: Vec<&CellRecord> = card.cells.iter().filter(|c| c.row == r.name).collect();
        if cells.is_empty() {
            continue;
        }
        let _ = writeln!(out, "\n### {}: {}\n", r.name, r.description);
        for c in cells {
            let word = c.outcome.map_or("error", |o| o.word());
            let _ = writeln!(
                out,
                "- **{}**: {word}: {} ({:.1} s, `{}`)",
                c.driver,
                c.reason,
                c.wall.as_secs_f64(),
                c.dir.display()
            );
            for p in c.problems() {
                let _ = writeln!(out, "  - differs from the row file: {p}");
            }
        }
    }
    out
}

/// The JSON report: the versions and every cell (their metrics are in each result.json).
pub fn json(card: &Card) -> Value {
    let cells: Vec<Value> = card
        .cells
        .iter()
        .map(|c| {
            let mut v = c.to_json();
            if let Some(o) = v.as_object_mut() {
                o.remove("metrics");
            }
            v
        })
        .collect();
    json!({
        "passed": card.passed(),
        "interrupted": card.interrupted,
        "subset": card.subset,
        "wall_s": card.wall.as_secs_f64().round(),
        "versions": card.versions,
        "rows": card.rows.iter().map(|r| json!({"name": r.name, "description": r.description})).collect::<Vec<_>>(),
        "drivers": card.drivers.iter().map(|d| d.name()).collect::<Vec<_>>(),
        "cells": cells,
    })
}

/// The reports' name in the card's output directory: `.md` and `.json` after it.
const REPORT: &str = "report";

/// Where [`write`] puts the Markdown report in `out`.
pub fn markdown_path(out: &Path) -> PathBuf {
    out.join(REPORT).with_extension("md")
}

/// Where [`write`] puts the JSON report in `out`.
pub fn json_path(out: &Path) -> PathBuf {
    out.join(REPORT).with_extension("json")
}

/// Writes the Markdown and the JSON report into `out`.
pub fn write(card: &Card, out: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(markdown_path(out), markdown(card))?;
    let text = serde_json::to_string_pretty(&json(card)).expect("JSON values encode");
    std::fs::write(json_path(out), text + "\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drivers::outcome::Outcome;
    use crate::drivers::versions::Versions;
    use std::path::PathBuf;
    use std::time::Duration;

    fn card() -> Card {
        let row = Row::parse(
            Path::new("drivers/lose-one.toml"),
            r#"description = "one lost command"
order = 1
faults = ["lose:lba={data},once=true"]
[miniport]
outcome = "survived"
[linux]
outcome = "hung"
[seabios]
outcome = "hung"
[ovmf]
outcome = "hung"
"#,
            &crate::drivers::profiles(),
        )
        .unwrap();
        let cell = |driver, outcome, expected| CellRecord {
            row: "lose-one".into(),
            driver,
            dir: PathBuf::from(format!("target/drivers/lose-one/{driver}")),
            wall: Duration::from_millis(1500),
            expected,
            outcome: Some(outcome),
            reason: "why".into(),
            error: None,
            checked: Vec::new(),
            acted: Vec::new(),
            metrics: Default::default(),
        };
        Card {
            // A row of which no cell ran (a subset) is left out of the tables.
            rows: vec![row.clone(), {
                let mut unrun = row;
                unrun.name = "unrun".into();
                unrun
            }],
            drivers: vec![DriverId::Miniport, DriverId::Seabios],
            cells: vec![
                cell(DriverId::Miniport, Outcome::Survived, Outcome::Survived),
                cell(DriverId::Seabios, Outcome::Survived, Outcome::Hung),
            ],
            versions: Versions::default(),
            wall: Duration::from_secs(12),
            interrupted: false,
            subset: false,
        }
    }

    #[test]
    fn the_table_marks_and_explains_a_cell_that_differs() {
        let c = card();
        let t = terminal(&c);
        let lines: Vec<&str> = t.lines().collect();
        assert!(
            lines[0].starts_with("fault     miniport          seabios"),
            "{t}"
        );
        assert!(
            lines[1].starts_with("lose-one  survived          survived !"),
            "{t}"
        );
        assert!(!t.contains("unrun"), "{t}");
        assert!(t.contains("lose-one × seabios (target/drivers/lose-one/seabios):\n    outcome survived, expected hung"), "{t}");
        assert!(
            t.ends_with("drivers: FAIL: 2 cells, 1 differ from their row files, wall 12 s\n"),
            "{t}"
        );
        let p = progress_line(2, 2, &c.cells[1]);
        assert_eq!(
            p,
            "[ 2/2] lose-one × seabios: survived ! (expected hung) 1.5 s"
        );
    }

    #[test]
    fn the_reports_hold_the_table_and_every_cell() {
        let c = card();
        let md = markdown(&c);
        assert!(!md.contains("unrun"), "{md}");
        assert!(
            md.contains("| `lose-one`: one lost command | survived | survived ! |"),
            "{md}"
        );
        assert!(
            md.contains("- **seabios**: survived: why (1.5 s, `target/drivers/lose-one/seabios`)"),
            "{md}"
        );
        let j = json(&c);
        assert_eq!(j["passed"], false);
        assert_eq!(j["cells"][1]["expected"], "hung");
        assert!(j["cells"][1].get("metrics").is_none());
    }
}
