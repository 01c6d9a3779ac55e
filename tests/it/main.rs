//! The one integration test binary: real Git repositories, a real `docker-registry`, image
//! pushing, a fault-injecting proxy and an in-memory Kubernetes API server (`common`). Add a module per area.

mod admission;
mod bounded;
mod common;
mod daemon;
mod git;
mod leader;
mod lock;
mod mirror;
mod mirror_engine;
mod outputs;
mod pins;
mod registry;
mod repo_content;
mod servers;
mod trust;
