//! imagelock: a GitOps reconciler that turns image tags into digest pins.
//!
//! The crate is a library so tests can drive every part; `main.rs` only calls [`cli::main`].
//! Pure cores (manifest validation, tag selection, lock generations) sit apart from the thin
//! network and Git shells around them (`registry`, `git`, `daemon`).

pub mod admission;
mod atomic_file;
mod char_index;
pub mod cli;
pub mod daemon;
#[doc(hidden)]
pub mod fuzz;
pub mod git;
pub mod lock;
pub mod manifest;
pub mod mirror;
pub mod outputs;
pub mod pins;
pub mod reconcile;
pub mod reference;
pub mod registry;
pub mod resolve;
pub mod serving;
pub mod telemetry;
pub mod tenancy;
pub mod yaml_scalar;
