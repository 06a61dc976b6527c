//! Markitect (`mkt`): a build system for LLM prompt pipelines.
//!
//! The library core never prints or exits; `src/main.rs` and `src/cli/`
//! parse arguments and render what the core returns.

pub mod at;
pub mod batch;
pub mod build;
pub mod cache_config;
pub mod clean;
mod codec;
pub mod config;
pub mod drift;
pub mod error;
pub mod estimate;
pub mod exec;
pub mod explain;
#[cfg(test)]
mod faults;
pub mod files;
pub mod fingerprint;
pub mod gc;
pub mod graph;
pub mod hash;
pub mod history;
pub mod init;
pub mod layout;
pub mod manifest;
pub mod pack;
pub mod prompty;
pub mod provenance;
pub mod remote;
pub mod remote_error;
pub mod show;
pub mod stamp;
pub mod state;
pub mod status;
pub mod store;
pub mod template;
pub mod view;
pub mod watch;
