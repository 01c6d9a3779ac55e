//! The real `imagelock` binary, run as a user would.

use std::path::Path;
use std::process::Output;

/// Runs `imagelock ARGS DIR` with `--insecure-registry` and `--mirror-registry` for each of
/// `insecure` (the tests' registries are the operator's own: plain HTTP, and allowed as
/// mirrors), without blocking the runtime (a test's FaultProxy runs on it).
pub async fn imagelock(dir: &Path, args: &[&str], insecure: &[&str]) -> Output {
    let mut command = operator_command(args, insecure);
    command.arg(dir);
    command.output().await.expect("run imagelock")
}

/// The real binary with `args`, no operator settings from the environment, and `insecure`
/// as plain-HTTP and mirror registries.
pub fn operator_command(args: &[&str], insecure: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagelock"));
    command.args(args);
    for variable in OPERATOR_VARIABLES {
        command.env_remove(variable);
    }
    for host in insecure {
        command.args(["--insecure-registry", host, "--mirror-registry", host]);
    }
    command
}

/// The environment variables of the operator's registry settings.
pub const OPERATOR_VARIABLES: &[&str] = &[
    "IMAGELOCK_CONFIG",
    "IMAGELOCK_REGISTRY_CONFIG",
    "IMAGELOCK_INSECURE_REGISTRIES",
    "IMAGELOCK_ALLOWED_REGISTRIES",
    "IMAGELOCK_MIRROR_REGISTRIES",
    "IMAGELOCK_REGISTRY_CREDENTIALS",
    "IMAGELOCK_TOKEN_REALMS",
    "IMAGELOCK_REGISTRY_RATE_LIMITS",
    "IMAGELOCK_REGISTRY_CONCURRENCY",
];
