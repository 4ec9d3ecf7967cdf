//! What one run of a load measured: IOPS, bandwidth, latency percentiles, notifications
//! per I/O, and CPU.

use serde::Serialize;

use super::frontend::load::LoadResult;

/// The figures of one run, as reported.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Figures {
    pub iops: f64,
    pub mib_s: f64,
    pub lat_mean_us: f64,
    pub lat_p50_us: f64,
    pub lat_p99_us: f64,
    pub lat_p999_us: f64,
    pub lat_max_us: f64,
    pub ios: u64,
    pub errors: u64,
    /// Kicks per I/O: how often the driver had to notify (EVENT_IDX suppresses most).
    pub kicks_per_io: f64,
    /// Sleeps for a call per I/O.
    pub waits_per_io: f64,
    /// Calls (used-buffer notifications) per I/O.
    pub calls_per_io: f64,
    /// Backend CPU seconds per second of the run, when measured.
    pub backend_cpu: Option<f64>,
    /// This process's (the frontend's) CPU seconds per second of the run, when measured.
    pub frontend_cpu: Option<f64>,
    /// Backend CPU microseconds per I/O: the cost of the request path, less sensitive to
    /// a noisy machine than IOPS when the backend is the bottleneck.
    pub backend_us_per_io: Option<f64>,
}

impl Figures {
    pub fn from_result(r: &LoadResult) -> Figures {
        let us = |ns: u64| ns as f64 / 1000.0;
        Figures {
            iops: r.iops(),
            mib_s: r.mib_per_s(),
            lat_mean_us: us(r.latency.mean()),
            lat_p50_us: us(r.latency.percentile(50)),
            lat_p99_us: us(r.latency.percentile(99)),
            lat_p999_us: us(r.latency.quantile(999, 1000)),
            lat_max_us: us(r.latency.max()),
            ios: r.ios(),
            errors: r.errors,
            kicks_per_io: r.kicks as f64 / r.ios().max(1) as f64,
            waits_per_io: r.waits as f64 / r.ios().max(1) as f64,
            calls_per_io: r.calls as f64 / r.ios().max(1) as f64,
            backend_cpu: None,
            frontend_cpu: None,
            backend_us_per_io: None,
        }
    }

    pub(super) fn bandwidth_only(mib_s: f64) -> Figures {
        Figures {
            iops: 0.0,
            mib_s,
            lat_mean_us: 0.0,
            lat_p50_us: 0.0,
            lat_p99_us: 0.0,
            lat_p999_us: 0.0,
            lat_max_us: 0.0,
            ios: 0,
            errors: 0,
            kicks_per_io: 0.0,
            waits_per_io: 0.0,
            calls_per_io: 0.0,
            backend_cpu: None,
            frontend_cpu: None,
            backend_us_per_io: None,
        }
    }
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.0} IOPS, {:.1} MiB/s, latency mean {:.1} us, p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us ({} I/Os, {} errors, {:.2} kicks/IO, {:.2} waits/IO, {:.2} calls/IO)",
            self.iops,
            self.mib_s,
            self.lat_mean_us,
            self.lat_p50_us,
            self.lat_p99_us,
            self.lat_p999_us,
            self.lat_max_us,
            self.ios,
            self.errors,
            self.kicks_per_io,
            self.waits_per_io,
            self.calls_per_io,
        )?;
        if let Some(c) = self.backend_cpu {
            write!(f, ", backend {c:.2} CPU")?;
        }
        if let Some(c) = self.frontend_cpu {
            write!(f, ", frontend {c:.2} CPU")?;
        }
        Ok(())
    }
}
