//! Markitect (`mkt`): a build system for LLM prompt pipelines.
//!
//! The library core never prints or exits; `src/main.rs` and `src/cli/`
//! parse arguments and render what the core returns.

pub mod config;
pub mod error;
pub mod hash;
pub mod template;
pub mod manifest;
pub mod state;
pub mod store;
pub mod files;
pub mod graph;
pub mod build;
pub mod exec;
