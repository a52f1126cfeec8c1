//! Storeline's benchmarks (`storeline bench …`) and the synthetic traffic they and
//! `storeline gen` use. A library of the product binary, kept apart from it: the binary only
//! parses the command line and calls [`ingest::ingest`], [`engine::run`], [`triggers::run`] or
//! [`delivery::run`]. Benchmarks that need a server start this binary (`current_exe`) as a
//! child, so they measure the shipped build, and every figure is printed, never asserted.

pub mod delivery;
pub mod engine;
pub mod ingest;
pub mod traffic;
pub mod triggers;
