//! `flakyhba-harness soak`: the data-integrity soak.

pub mod control;
