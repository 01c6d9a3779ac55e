//! The one integration test binary: every module here shares `common` (a real
//! `docker-registry`, image pushing, a fault-injecting proxy). Add a module per area.

mod common;
mod registry;
