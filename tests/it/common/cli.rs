//! The real `imagelock` binary, run as a user would.

use std::path::Path;
use std::process::Output;

/// Runs `imagelock ARGS DIR` with `--insecure-registry` for each of `insecure`, without
/// blocking the runtime (a test's FaultProxy runs on it).
pub async fn imagelock(dir: &Path, args: &[&str], insecure: &[&str]) -> Output {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagelock"));
    command
        .args(args)
        .arg(dir)
        .env_remove("IMAGELOCK_INSECURE_REGISTRIES");
    for host in insecure {
        command.args(["--insecure-registry", host]);
    }
    command.output().await.expect("run imagelock")
}
