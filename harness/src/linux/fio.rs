//! The fio jobs of a bench boot: what /init runs, fio's JSON on the serial port, and the
//! verdict on the boot.

use serde::Serialize;
use serde_json::Value;

use super::verdict::StepResult;
use crate::launch::serial::SerialLine;

/// The marker of a fio result line: `FLAKYHBA-FIO <job> <fio's JSON on one line>`.
pub const FIO_MARKER: &str = "FLAKYHBA-FIO ";
/// The fio jobs /init runs (fio `--rw` values), 4 KiB at iodepth 32 per queue.
pub const JOBS: &[&str] = &["randread", "randwrite"];
/// fio's figures for one job, from its JSON (`jobs[0]`, group reporting).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FioFigures {
    pub iops: f64,
    pub mib_s: f64,
    pub ios: u64,
    /// Submission to completion (fio's `lat_ns`).
    pub lat_mean_us: f64,
    /// Completion latency percentiles (fio's `clat_ns`, as fio prints them).
    pub clat_p50_us: f64,
    pub clat_p99_us: f64,
    pub clat_p999_us: f64,
    pub clat_max_us: f64,
    /// Guest CPU of the fio job (user + system, percent of one CPU).
    pub guest_cpu_percent: f64,
}

impl FioFigures {
    /// The figures of `job` (a fio `--rw` value) from fio's JSON output.
    pub fn from_fio_json(json: &Value, job: &str) -> Option<FioFigures> {
        let j = json.get("jobs")?.get(0)?;
        if j.get("error").and_then(Value::as_u64).unwrap_or(0) != 0 {
            return None;
        }
        let side = j.get(if job.contains("write") {
            "write"
        } else {
            "read"
        })?;
        let f = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64);
        let us = |ns: f64| ns / 1000.0;
        let clat = side.get("clat_ns")?;
        let pct = |p: &str| {
            clat.get("percentile")
                .and_then(|m| m.get(p))
                .and_then(Value::as_f64)
                .map(us)
        };
        Some(FioFigures {
            iops: f(side, "iops")?,
            // fio's bw is KiB/s.
            mib_s: f(side, "bw")? / 1024.0,
            ios: side.get("total_ios").and_then(Value::as_u64).unwrap_or(0),
            lat_mean_us: us(f(side.get("lat_ns")?, "mean")?),
            clat_p50_us: pct("50.000000").unwrap_or(0.0),
            clat_p99_us: pct("99.000000").unwrap_or(0.0),
            clat_p999_us: pct("99.900000").unwrap_or(0.0),
            clat_max_us: us(f(clat, "max").unwrap_or(0.0)),
            guest_cpu_percent: f(j, "usr_cpu").unwrap_or(0.0) + f(j, "sys_cpu").unwrap_or(0.0),
        })
    }
}

/// What one boot printed, judged: every step passed, the result says pass, QEMU exited 0
/// and each job's JSON parsed.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum BenchJudgeError {
    #[error("steps failed: {0}")]
    Steps(String),
    #[error("the guest printed no result line")]
    NoResultLine,
    #[error("the guest reports {0:?}")]
    GuestFailed(String),
    #[error("no fio result for {0}")]
    NoFioResult(String),
    #[error("QEMU exited with {0:?} instead of 0")]
    QemuExit(Option<i32>),
}

/// The figures of every job, and the guest's kernel, or why the boot failed.
pub fn judge_bench(
    lines: &[SerialLine],
    exit_code: Option<i32>,
) -> Result<(String, Vec<(String, FioFigures)>), BenchJudgeError> {
    let logs = || {
        lines.iter().filter_map(|l| match l {
            SerialLine::Log(t) => Some(t.as_str()),
            SerialLine::Report(_) => None,
        })
    };
    let steps: Vec<StepResult> = logs().filter_map(StepResult::parse).collect();
    let mut bad: Vec<String> = steps
        .iter()
        .filter(|s| s.rc != 0)
        .map(|s| format!("{} rc={}", s.name, s.rc))
        .collect();
    let required = ["modules", "find-disk", "fio-warmup"]
        .into_iter()
        .map(str::to_owned)
        .chain(JOBS.iter().map(|j| format!("fio-{j}")));
    for name in required {
        if !steps.iter().any(|s| s.name == name) {
            bad.push(format!("{name} never ran"));
        }
    }
    if !bad.is_empty() {
        return Err(BenchJudgeError::Steps(bad.join(", ")));
    }
    let result = lines
        .iter()
        .rev()
        .find_map(SerialLine::result)
        .ok_or(BenchJudgeError::NoResultLine)?;
    let verdict = result.get("result").and_then(Value::as_str).unwrap_or("");
    if verdict != "pass" {
        return Err(BenchJudgeError::GuestFailed(verdict.to_owned()));
    }
    if exit_code != Some(0) {
        return Err(BenchJudgeError::QemuExit(exit_code));
    }
    let mut figures = Vec::new();
    for job in JOBS {
        let prefix = format!("{FIO_MARKER}{job} ");
        let fig = logs()
            .filter_map(|t| t.find(&prefix).map(|at| &t[at + prefix.len()..]))
            .filter_map(|json| serde_json::from_str::<Value>(json).ok())
            .find_map(|v| FioFigures::from_fio_json(&v, job))
            .ok_or_else(|| BenchJudgeError::NoFioResult((*job).to_owned()))?;
        figures.push(((*job).to_owned(), fig));
    }
    let kernel = result
        .get("kernel")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    Ok((kernel, figures))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// fio 3.33's JSON, cut to what is read.
    const FIO: &str = r#"{"fio version":"fio-3.33","jobs":[{"jobname":"randread","error":0,
        "read":{"io_bytes":40960,"bw":1600,"iops":400.5,"total_ios":10,
          "lat_ns":{"mean":80000.0},
          "clat_ns":{"min":1,"max":900000,"mean":79000.0,
            "percentile":{"50.000000":77824,"99.000000":150528,"99.900000":700416}}},
        "write":{"io_bytes":0,"bw":0,"iops":0.0,"total_ios":0,"lat_ns":{"mean":0.0},
          "clat_ns":{"min":0,"max":0,"mean":0.0}},
        "usr_cpu":12.5,"sys_cpu":40.0}]}"#;

    #[test]
    fn fio_json_gives_the_figures_of_the_job() {
        let v: Value = serde_json::from_str(FIO).unwrap();
        let f = FioFigures::from_fio_json(&v, "randread").unwrap();
        assert_eq!(f.iops, 400.5);
        assert!((f.mib_s - 1600.0 / 1024.0).abs() < 1e-9);
        assert_eq!(f.ios, 10);
        assert_eq!(f.lat_mean_us, 80.0);
        assert_eq!((f.clat_p50_us, f.clat_p99_us), (77.824, 150.528));
        assert_eq!(f.clat_p999_us, 700.416);
        assert_eq!(f.clat_max_us, 900.0);
        assert_eq!(f.guest_cpu_percent, 52.5);
        let w = FioFigures::from_fio_json(&v, "randwrite").unwrap();
        assert_eq!((w.iops, w.clat_p99_us), (0.0, 0.0));
        let failed: Value =
            serde_json::from_str(&FIO.replace(r#""error":0"#, r#""error":5"#)).unwrap();
        assert_eq!(FioFigures::from_fio_json(&failed, "randread"), None);
    }

    fn transcript(jobs: &[&str], result: &str) -> Vec<SerialLine> {
        let mut v = vec![
            SerialLine::parse("FLAKYHBA-STEP modules rc=0"),
            SerialLine::parse("FLAKYHBA-STEP find-disk rc=0"),
            SerialLine::parse("FLAKYHBA-STEP fio-warmup rc=0"),
        ];
        let one_line = FIO.replace('\n', "");
        for job in jobs {
            let json = one_line.replace("randread", job);
            v.push(SerialLine::parse(&format!("FLAKYHBA-FIO {job} {json}")));
            v.push(SerialLine::parse(&format!("FLAKYHBA-STEP fio-{job} rc=0")));
        }
        v.push(SerialLine::parse(result));
        v
    }

    const PASS: &str =
        r#"{"result":"pass","kernel":"6.1.0-57-amd64","queues":1,"steps":4,"failed":[]}"#;

    #[test]
    fn a_bench_boot_is_judged_and_parsed() {
        let (kernel, figs) = judge_bench(&transcript(JOBS, PASS), Some(0)).unwrap();
        assert_eq!(kernel, "6.1.0-57-amd64");
        assert_eq!(figs.len(), JOBS.len());
        assert_eq!(figs[0].0, "randread");
        assert_eq!(figs[0].1.iops, 400.5);
        assert_eq!(
            judge_bench(&transcript(&["randread"], PASS), Some(0)),
            Err(BenchJudgeError::Steps("fio-randwrite never ran".into()))
        );
        assert_eq!(
            judge_bench(&transcript(JOBS, PASS), Some(1)),
            Err(BenchJudgeError::QemuExit(Some(1)))
        );
        let mut lines = transcript(JOBS, PASS);
        lines.retain(
            |l| !matches!(l, SerialLine::Log(t) if t.starts_with("FLAKYHBA-FIO randwrite")),
        );
        assert_eq!(
            judge_bench(&lines, Some(0)),
            Err(BenchJudgeError::NoFioResult("randwrite".into()))
        );
    }
}
