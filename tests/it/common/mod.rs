//! Shared integration-test fixtures.
//!
//! - [`TestRegistry`]: a real `docker-registry` (distribution 2.8) on a free port, anonymous or
//!   with htpasswd Basic auth; `TestRegistry::start()` is synchronous and blocks until
//!   `GET /v2/` answers; the process is killed on drop.
//! - [`Pusher`] and the `push_*` functions: images, indexes and many tags pushed through the
//!   registry API with plain reqwest, independent of the code under test.
//! - [`FaultProxy`]: a scripted proxy for the faults a real registry will not produce.
//! - [`HostileRegistry`]: a registry of endless, giant, slow and trickling answers.
//! - [`CredentialTrap`]: a malicious registry or token realm that records every
//!   `Authorization` header it is sent.
//! - [`FakeApiServer`]: Leases in memory behind a `kube::Client`, with faulty links.
//! - [`imagelock`]: the real binary.

#![allow(dead_code, unused_imports)] // Not every test module uses every fixture.

mod apiserver;
mod cli;
mod gitops;
mod hostile;
mod proxy;
mod push;
mod registry;
mod trap;

pub use apiserver::{FakeApiServer, Link, LinkFault};
pub use cli::{OPERATOR_VARIABLES, imagelock, operator_command};
pub use gitops::{ConfigRepo, git, image_set, repo_config, write};
pub use hostile::{GIANT_BYTES, HostileRegistry, TrickleImage};
pub use proxy::{Fault, FaultProxy, Seen};
pub use push::{
    ImageSpec, PushedImage, PushedIndex, Pusher, push_blob, push_image, push_index, push_many_tags,
    skopeo_digest,
};
pub use registry::{TestRegistry, free_port};
pub use trap::{CredentialTrap, Recorded, Script};
