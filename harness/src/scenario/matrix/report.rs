//! Reports of a matrix: JUnit XML (one testcase per run, the failed expectations in
//! `<failure>`) for CI, and JSON (one object per run, as in each run's result.json).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use super::record::RunRecord;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("could not write the report {0}: {1}")]
    CouldNotWrite(String, std::io::Error),
}

/// Text escaped for XML character data and attribute values. Characters XML 1.0 cannot
/// hold at all (most C0 controls) become U+FFFD.
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Kept literally in text; in attributes as references so they survive
            // attribute-value normalisation.
            '\n' => out.push_str("&#10;"),
            '\t' => out.push_str("&#9;"),
            '\r' => out.push_str("&#13;"),
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// The JUnit XML document of `records`.
pub fn junit(records: &[RunRecord], wall: Duration) -> String {
    let failures = records.iter().filter(|r| !r.passed()).count();
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    out.push_str(&format!(
        "<testsuites name=\"flakyhba qemu-test\" tests=\"{}\" failures=\"{failures}\" time=\"{:.3}\">\n",
        records.len(),
        wall.as_secs_f64()
    ));
    out.push_str(&format!(
        "  <testsuite name=\"flakyhba.matrix\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{:.3}\">\n",
        records.len(),
        wall.as_secs_f64()
    ));
    for r in records {
        out.push_str(&format!(
            "    <testcase classname=\"flakyhba.matrix.{}\" name=\"{}\" time=\"{:.3}\"",
            xml_escape(&r.scenario),
            xml_escape(&r.name),
            r.wall.as_secs_f64()
        ));
        let fails = r.failures();
        if fails.is_empty() {
            out.push_str(" />\n");
            continue;
        }
        out.push_str(">\n");
        out.push_str(&format!(
            "      <failure message=\"{}\" type=\"expectation\">{}</failure>\n",
            xml_escape(&fails.join("; ")),
            xml_escape(&r.details())
        ));
        out.push_str(&format!(
            "      <system-out>{}</system-out>\n",
            xml_escape(&format!("logs in {}", r.dir.display()))
        ));
        out.push_str("    </testcase>\n");
    }
    out.push_str("  </testsuite>\n</testsuites>\n");
    out
}

/// The JSON report: an array of every run's object.
pub fn json(records: &[RunRecord]) -> Value {
    Value::Array(records.iter().map(RunRecord::to_json).collect())
}

pub fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .map_err(|e| ReportError::CouldNotWrite(path.display().to_string(), e))?;
    }
    std::fs::write(path, text)
        .map_err(|e| ReportError::CouldNotWrite(path.display().to_string(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_special_characters_are_escaped() {
        assert_eq!(
            xml_escape(r#"expectation "a < b && c > 'd'" failed"#),
            "expectation &quot;a &lt; b &amp;&amp; c &gt; &apos;d&apos;&quot; failed"
        );
        assert_eq!(xml_escape("line\nnext\ttab"), "line&#10;next&#9;tab");
        // A guest that printed garbage: control characters cannot appear in XML 1.0.
        assert_eq!(xml_escape("a\u{1b}[0m\u{0}b"), "a\u{fffd}[0m\u{fffd}b");
        assert_eq!(xml_escape("µs → ok"), "µs → ok");
    }
}
