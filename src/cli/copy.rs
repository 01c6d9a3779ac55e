//! `imagelock copy SRC DST`: one image between registries, digest preserved.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};

use super::RegistryArgs;
use crate::manifest::RepoConfig;
use crate::mirror::progress::TerminalProgress;
use crate::mirror::{CopyRequest, EngineOptions, MirrorEngine};
use crate::reference::{ImageRef, Platform};
use crate::registry::ParsedManifest;

pub async fn run(
    source: &str,
    destination: &str,
    all: bool,
    platform: Option<&Platform>,
    registry: &RegistryArgs,
) -> anyhow::Result<ExitCode> {
    let source = ImageRef::parse(source).with_context(|| format!("source {source:?}"))?;
    let destination =
        ImageRef::parse(destination).with_context(|| format!("destination {destination:?}"))?;
    // The operator's own command: every login of the daemon, under the same host rules.
    let access = registry.access(&RepoConfig::default())?;
    let client = access.operator().clone();

    let reference = match (&source.digest, &source.tag) {
        (Some(digest), _) => digest.to_string(),
        (None, Some(tag)) => tag.clone(),
        (None, None) => "latest".to_owned(),
    };
    let manifest = client
        .get_manifest(&source.repo, &reference)
        .await?
        .with_context(|| format!("{}:{reference} not found", source.repo))?;
    let mut digest = manifest.digest.clone();
    if let ParsedManifest::Index(index) = manifest.parse()?
        && !all
    {
        // Like `skopeo copy` without --all: only this machine's platform (or --platform).
        let wanted = platform.cloned().unwrap_or_else(host_platform);
        let child = index
            .manifests
            .iter()
            .find(|d| {
                d.platform
                    .as_ref()
                    .is_some_and(|p| platform_matches(p, &wanted))
            })
            .with_context(|| format!("{source} has no {wanted} image; use --all or --platform"))?;
        digest = child.digest.clone();
    }
    if let Some(wanted) = &destination.digest
        && *wanted != digest
    {
        bail!("destination digest {wanted} differs from the source's {digest}");
    }
    let tags = destination
        .tag
        .iter()
        .chain(source.tag.iter())
        .take(1)
        .cloned()
        .collect();
    let request = CopyRequest {
        source: source.repo.clone(),
        digest,
        destination: destination.repo.clone(),
        tags,
        platforms: Vec::new(),
    };
    let progress = Arc::new(TerminalProgress::new(1));
    let engine = MirrorEngine::new(client, EngineOptions::default(), progress.clone());
    let report = engine.copy(&request).await;
    progress.finish();
    let report = report?;
    println!("{}@{}", request.destination, request.digest);
    println!("{}", super::mirror::summary(&report));
    Ok(ExitCode::SUCCESS)
}

fn platform_matches(have: &Platform, want: &Platform) -> bool {
    have.os == want.os
        && have.architecture == want.architecture
        && (want.variant.is_none() || have.variant == want.variant)
}

/// This machine's platform in OCI terms.
fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    Platform {
        os: "linux".into(),
        architecture: architecture.into(),
        variant: None,
    }
}
