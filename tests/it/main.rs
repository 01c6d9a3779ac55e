//! The one integration test binary: real Git repositories, a real `docker-registry`, image
//! pushing and a fault-injecting proxy (`common`). Add a module per area.

mod admission;
mod common;
mod daemon;
mod git;
mod lock;
mod mirror;
mod mirror_engine;
mod outputs;
mod registry;
