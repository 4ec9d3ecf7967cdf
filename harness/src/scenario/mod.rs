//! Scenario runs: the scenario file and its expectation language, the metrics of a run
//! (guest report, backend trace, disk image), judging, the built-in smoke run, the
//! matrix runner with its reports, and the timeline picture of a run.

pub mod expect;
pub mod file;
pub mod image;
pub mod matrix;
pub mod metrics;
pub mod smoke;
pub mod timeline;
