//! The suite's results: each case's median, min and max, the ratios between cases, the
//! terminal table and the JSON file.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::cases::{Server, HOST_READ, RANDREAD, RANDREAD_4Q, RANDWRITE, SEQREAD};
use super::figures::Figures;
use super::frontend::load::Pattern;
use super::socket::LoadOptions;
use super::BenchError;

#[derive(Clone, Debug, Serialize)]
pub struct CaseSummary {
    pub name: String,
    pub server: Server,
    pub queues: u16,
    pub queue_depth: u16,
    pub block_bytes: u32,
    pub pattern: &'static str,
    pub read_percent: u8,
    /// The figure compared: IOPS for 4k cases, MiB/s for 1 MiB ones.
    pub metric: &'static str,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub runs: Vec<Figures>,
    /// The round (from 0) of each entry of `runs`, so ratios pair runs of one round.
    pub rounds: Vec<usize>,
    /// The peer's runs that failed; they are left out of the figures.
    pub failures: Vec<PeerFailure>,
}

/// A peer's run that failed (a lost request, an error status, a crash): the suite goes
/// on without it and the table says so. Our backend failing still ends the suite.
#[derive(Clone, Debug, Serialize)]
pub struct PeerFailure {
    pub round: usize,
    pub error: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    pub name: String,
    /// Median over the rounds of the ratio of the two runs of one round (neighbours in
    /// time, so a drifting machine cancels out).
    pub value: f64,
    pub min: f64,
    pub max: f64,
    /// The ratio of the two cases' medians.
    pub of_medians: f64,
    /// The target, when it sets one.
    pub target: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct SuiteReport {
    pub image: String,
    pub image_bytes: u64,
    pub repeats: u32,
    pub duration_s: f64,
    pub peer: Option<String>,
    pub cases: Vec<CaseSummary>,
    pub ratios: Vec<Ratio>,
}

pub(super) fn summarize(
    name: &str,
    server: Server,
    l: &LoadOptions,
    done: Vec<(usize, Figures)>,
    failures: Vec<PeerFailure>,
) -> CaseSummary {
    let (rounds, runs): (Vec<usize>, Vec<Figures>) = done.into_iter().unzip();
    let big = l.block_bytes >= 1 << 20;
    let mut vals: Vec<f64> = runs
        .iter()
        .map(|f| if big { f.mib_s } else { f.iops })
        .collect();
    vals.sort_by(f64::total_cmp);
    CaseSummary {
        name: name.to_owned(),
        server,
        queues: l.queues,
        queue_depth: l.queue_depth,
        block_bytes: l.block_bytes,
        pattern: match l.pattern {
            Pattern::Random => "random",
            Pattern::Sequential => "sequential",
        },
        read_percent: l.read_percent,
        metric: if big { "MiB/s" } else { "IOPS" },
        median: median(&vals),
        min: vals.first().copied().unwrap_or(0.0),
        max: vals.last().copied().unwrap_or(0.0),
        runs,
        rounds,
        failures,
    }
}

/// The runs of `a` and `b` that belong to the same round.
fn same_round<'a>(
    a: &'a CaseSummary,
    b: &'a CaseSummary,
) -> impl Iterator<Item = (&'a Figures, &'a Figures)> {
    a.rounds.iter().zip(&a.runs).filter_map(|(ra, x)| {
        let i = b.rounds.iter().position(|rb| rb == ra)?;
        Some((x, b.runs.get(i)?))
    })
}

pub(super) fn median(sorted: &[f64]) -> f64 {
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

fn find<'a>(s: &'a [CaseSummary], name: &str, server: Server) -> Option<&'a CaseSummary> {
    s.iter().find(|c| c.name == name && c.server == server)
}

pub(super) fn ratios(s: &[CaseSummary]) -> Vec<Ratio> {
    let mut out = Vec::new();
    let mut push =
        |name: String, a: Option<&CaseSummary>, b: Option<&CaseSummary>, target: Option<&str>| {
            if let (Some(a), Some(b)) = (a, b) {
                if b.median > 0.0 && !a.runs.is_empty() && !b.runs.is_empty() {
                    let metric = |c: &CaseSummary, f: &Figures| {
                        if c.metric == "MiB/s" {
                            f.mib_s
                        } else {
                            f.iops
                        }
                    };
                    let mut paired: Vec<f64> = same_round(a, b)
                        .map(|(x, y)| metric(a, x) / metric(b, y))
                        .filter(|r| r.is_finite())
                        .collect();
                    paired.sort_by(f64::total_cmp);
                    let of_medians = a.median / b.median;
                    out.push(Ratio {
                        name,
                        value: if paired.is_empty() {
                            of_medians
                        } else {
                            median(&paired)
                        },
                        min: paired.first().copied().unwrap_or(of_medians),
                        max: paired.last().copied().unwrap_or(of_medians),
                        of_medians,
                        target: target.map(str::to_owned),
                    });
                }
            }
        };
    for n in [RANDREAD, RANDWRITE, SEQREAD] {
        push(
            format!("{n}: ours / peer"),
            find(s, n, Server::Ours),
            find(s, n, Server::Peer),
            // The figure for random reads is against rust-vmm's vhost-device-scsi.
            (n == RANDREAD).then_some(">= 1.3 against vhost-device-scsi"),
        );
    }
    push(
        format!("4 queues / 1 queue ({RANDREAD_4Q} / {RANDREAD})"),
        find(s, RANDREAD_4Q, Server::Ours),
        find(s, RANDREAD, Server::Ours),
        Some(">= 1.6"),
    );
    push(
        format!("{SEQREAD} / host read bandwidth"),
        find(s, SEQREAD, Server::Ours),
        find(s, HOST_READ, Server::Host),
        Some(">= 0.70"),
    );
    push(
        format!("peer {SEQREAD} / host read bandwidth"),
        find(s, SEQREAD, Server::Peer),
        find(s, HOST_READ, Server::Host),
        None,
    );
    push(
        format!("armed idle plan / no plan ({RANDREAD})"),
        find(s, RANDREAD, Server::OursArmedIdle),
        find(s, RANDREAD, Server::Ours),
        Some(">= 0.98"),
    );
    // The same question in backend CPU per I/O (inverted so that above 1 is better here too).
    if let (Some(idle), Some(none)) = (
        find(s, RANDREAD, Server::OursArmedIdle),
        find(s, RANDREAD, Server::Ours),
    ) {
        let mut paired: Vec<f64> = same_round(idle, none)
            .filter_map(|(x, y)| Some(y.backend_us_per_io? / x.backend_us_per_io?))
            .filter(|r| r.is_finite())
            .collect();
        paired.sort_by(f64::total_cmp);
        if let (Some(&min), Some(&max)) = (paired.first(), paired.last()) {
            let per_io = |c: &CaseSummary| {
                let mut v: Vec<f64> = c.runs.iter().filter_map(|f| f.backend_us_per_io).collect();
                v.sort_by(f64::total_cmp);
                median(&v)
            };
            out.push(Ratio {
                name: format!("backend CPU per I/O: no plan / armed idle plan ({RANDREAD})"),
                value: median(&paired),
                min,
                max,
                of_medians: per_io(none) / per_io(idle),
                target: Some(">= 0.98".into()),
            });
        }
    }
    out
}

/// The terminal table.
pub fn render_table(r: &SuiteReport) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "image {} ({} MiB), {} runs of {:.1} s per case, median [min - max]{}",
        r.image,
        r.image_bytes >> 20,
        r.repeats,
        r.duration_s,
        r.peer
            .as_deref()
            .map(|p| format!(", peer: {p}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        t,
        "{:<22} {:<15} {:>30} {:>9} {:>9} {:>8} {:>8} {:>9}",
        "case",
        "server",
        "median [min - max]",
        "p50 us",
        "p99 us",
        "srv cpu",
        "fe cpu",
        "srv us/IO"
    );
    for c in &r.cases {
        let value = |f: &Figures| {
            if c.metric == "MiB/s" {
                f.mib_s
            } else {
                f.iops
            }
        };
        // Latency and CPU of the run closest to the median.
        let mid = c.runs.iter().min_by(|a, b| {
            (value(a) - c.median)
                .abs()
                .total_cmp(&(value(b) - c.median).abs())
        });
        let cpu = |c: Option<f64>| c.map(|c| format!("{c:.2}")).unwrap_or_else(|| "-".into());
        let (p50, p99, srv, fe, per_io) = match mid {
            Some(f) if c.server != Server::Host => (
                format!("{:.1}", f.lat_p50_us),
                format!("{:.1}", f.lat_p99_us),
                cpu(f.backend_cpu),
                cpu(f.frontend_cpu),
                cpu(f.backend_us_per_io),
            ),
            _ => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
        };
        let fig = if c.runs.is_empty() {
            format!("no run passed ({})", c.metric)
        } else {
            format!("{:.0} {} [{:.0} - {:.0}]", c.median, c.metric, c.min, c.max)
        };
        let _ = writeln!(
            t,
            "{:<22} {:<15} {:>30} {:>9} {:>9} {:>8} {:>8} {:>9}",
            c.name,
            c.server.label(),
            fig,
            p50,
            p99,
            srv,
            fe,
            per_io
        );
        if let Some(first) = c.failures.first() {
            let _ = writeln!(
                t,
                "  {} of {} runs FAILED and are left out; round {}: {}",
                c.failures.len(),
                c.failures.len() + c.runs.len(),
                first.round + 1,
                first.error.lines().next().unwrap_or_default()
            );
        }
    }
    let _ = writeln!(
        t,
        "ratios: median of each round's ratio [min - max], then the ratio of the medians"
    );
    for x in &r.ratios {
        let _ = writeln!(
            t,
            "  {:<70} {:>5.2} [{:.2} - {:.2}] {:>5.2}{}",
            x.name,
            x.value,
            x.min,
            x.max,
            x.of_medians,
            x.target
                .as_deref()
                .map(|t| format!("  (target {t})"))
                .unwrap_or_default()
        );
    }
    t
}

pub fn write_json(r: &SuiteReport, path: &Path) -> Result<(), BenchError> {
    let text = serde_json::to_string_pretty(r).expect("report serializes");
    std::fs::write(path, text + "\n").map_err(|e| BenchError::CouldNotWriteJson(path.to_owned(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, server: Server, median: f64) -> CaseSummary {
        CaseSummary {
            name: name.into(),
            server,
            queues: 1,
            queue_depth: 32,
            block_bytes: 4096,
            pattern: "random",
            read_percent: 100,
            metric: "IOPS",
            median,
            min: median,
            max: median,
            runs: vec![Figures {
                iops: median,
                ..Figures::bandwidth_only(0.0)
            }],
            rounds: vec![0],
            failures: vec![],
        }
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[1.0, 2.0, 9.0]), 2.0);
        assert_eq!(median(&[1.0, 3.0]), 2.0);
        assert_eq!(median(&[]), 0.0);
    }

    #[test]
    fn ratios_compare_the_right_cases() {
        let s = vec![
            case(RANDREAD, Server::Ours, 100.0),
            case(RANDREAD, Server::Peer, 50.0),
            case(RANDREAD_4Q, Server::Ours, 180.0),
            case(RANDREAD, Server::OursArmedIdle, 99.0),
        ];
        let r = ratios(&s);
        let get = |n: &str| r.iter().find(|x| x.name.starts_with(n)).map(|x| x.value);
        assert_eq!(get(&format!("{RANDREAD}: ours / peer")), Some(2.0));
        let target = |n: &str| {
            r.iter()
                .find(|x| x.name.starts_with(n))
                .and_then(|x| x.target.clone())
        };
        assert_eq!(
            target(&format!("{RANDREAD}: ours / peer")).as_deref(),
            Some(">= 1.3 against vhost-device-scsi")
        );
        assert_eq!(get("4 queues"), Some(1.8));
        assert_eq!(get("armed idle"), Some(0.99));
        // No host or write cases: no such ratios.
        assert_eq!(get(&format!("{SEQREAD} / host")), None);
        assert_eq!(get(RANDWRITE), None);
    }

    #[test]
    fn ratios_pair_the_runs_of_each_round() {
        let with_runs = |server, iops: &[f64]| {
            let mut c = case(RANDREAD, server, 0.0);
            c.runs = iops
                .iter()
                .map(|&i| {
                    let mut f = Figures::bandwidth_only(0.0);
                    f.iops = i;
                    f
                })
                .collect();
            c.rounds = (0..iops.len()).collect();
            let mut v = iops.to_vec();
            v.sort_by(f64::total_cmp);
            c.median = median(&v);
            c
        };
        // The machine doubles its speed after round 1; the idle plan costs 10 % in
        // every round, and every paired ratio says so.
        let mut s = vec![
            with_runs(Server::Ours, &[100.0, 200.0, 200.0]),
            with_runs(Server::OursArmedIdle, &[90.0, 180.0, 180.0]),
        ];
        // 5 us of backend CPU per I/O without a plan, 5.5 us with the idle one.
        for (c, us) in s.iter_mut().zip([5.0, 5.5]) {
            for f in &mut c.runs {
                f.backend_us_per_io = Some(us);
            }
        }
        let r = ratios(&s);
        let cpu = r
            .iter()
            .find(|x| x.name.starts_with("backend CPU per I/O"))
            .unwrap();
        assert!((cpu.value - 5.0 / 5.5).abs() < 1e-9, "{cpu:?}");
        assert!((cpu.of_medians - 5.0 / 5.5).abs() < 1e-9, "{cpu:?}");
        let idle = r.iter().find(|x| x.name.starts_with("armed idle")).unwrap();
        assert!((idle.value - 0.9).abs() < 1e-9, "{idle:?}");
        assert!((idle.min - 0.9).abs() < 1e-9 && (idle.max - 0.9).abs() < 1e-9);
        assert!((idle.of_medians - 0.9).abs() < 1e-9);
        // One round on a disturbed machine: the median of the rounds ignores it.
        let s = vec![
            with_runs(Server::Ours, &[200.0, 200.0, 200.0]),
            with_runs(Server::OursArmedIdle, &[190.0, 100.0, 196.0]),
        ];
        let r = ratios(&s);
        let idle = r.iter().find(|x| x.name.starts_with("armed idle")).unwrap();
        assert!((idle.value - 0.95).abs() < 1e-9, "{idle:?}");
        assert!((idle.min - 0.5).abs() < 1e-9 && (idle.max - 0.98).abs() < 1e-9);
    }
}
