//! Resolution: ask the registries what each declared tag, pattern and digest points to.
//!
//! The network shell around the pure parts: tag selection lives on
//! [`crate::manifest::TagMatcher`], generations in [`crate::lock`]. What comes out is an
//! [`ImageObservation`] per image entry; failures are kept per tag with their reason.

mod describe;

use std::collections::BTreeMap;

use futures_util::StreamExt as _;
use futures_util::stream;

use crate::lock::{ImageObservation, LockedImage, ResolvedDigest, TagObservation, TagObservations};
use crate::manifest::ImageSpec;
use crate::reference::Digest;
use crate::registry::RegistryClient;

pub use describe::{Describer, platform_problem};

/// Tags resolved at once for one image; the registry client bounds connections per host.
const TAG_CONCURRENCY: usize = 16;

/// Resolves one image entry. Never fails as a whole: failures are reasons inside the result.
pub async fn resolve_image(
    client: &RegistryClient,
    spec: &ImageSpec,
    previous: Option<&LockedImage>,
) -> ImageObservation {
    let describer = Describer::new(client, &spec.source);
    let previous = previous.filter(|p| p.source == spec.source.to_string());

    let mut wanted: Vec<String> = spec.tags.clone();
    if let Some(matcher) = &spec.matcher {
        // Only the tags the pattern can pick are kept while the pages are read.
        let candidate = |tag: &str| matcher.accepts(tag);
        match client.list_tags(&spec.source, &candidate).await {
            Ok(all) => wanted.extend(matcher.select(&all)),
            Err(e) => {
                return ImageObservation {
                    tags: Err(format!("listing tags of {}: {e}", spec.source)),
                    pinned: BTreeMap::new(),
                    mirror: None,
                };
            }
        }
    }
    wanted.sort();
    wanted.dedup();

    let resolve_tag = |tag: String| {
        let describer = &describer;
        async move {
            let prev = previous.and_then(|p| p.tags.get(&tag));
            let observation = match client.head_manifest(&spec.source, &tag).await {
                Ok(None) => {
                    TagObservation::Failed(format!("tag {tag} not found in {}", spec.source))
                }
                Err(e) => TagObservation::Failed(e.to_string()),
                Ok(Some(head)) => {
                    // The previous pin already describes this digest: no manifest fetch.
                    let known = prev
                        .filter(|p| p.digest == head.digest)
                        .map(|p| ResolvedDigest {
                            digest: p.digest.clone(),
                            media_type: p.media_type.clone(),
                            platforms: p.platforms.clone(),
                        });
                    let described = match known {
                        Some(known) => Ok(known),
                        None => describer.describe(&head.digest).await,
                    };
                    checked(described, spec)
                }
            };
            (tag, observation)
        }
    };
    let mut tags: TagObservations = stream::iter(wanted)
        .map(resolve_tag)
        .buffer_unordered(TAG_CONCURRENCY)
        .collect()
        .await;
    tags.sort_by(|a, b| a.0.cmp(&b.0));

    // Promoter-style digests: they must exist at the source; their tags are fixed.
    for (digest, digest_tags) in &spec.digests {
        let observation = checked(describer.describe(digest).await, spec);
        for tag in digest_tags {
            match tags.binary_search_by(|(t, _)| t.cmp(tag)) {
                Ok(at) => tags[at].1 = observation.clone(),
                Err(at) => tags.insert(at, (tag.clone(), observation.clone())),
            }
        }
    }

    let pinned = pinned_details(spec, previous, &tags, &describer).await;
    ImageObservation {
        tags: Ok(tags),
        pinned,
        mirror: None,
    }
}

fn checked(described: Result<ResolvedDigest, String>, spec: &ImageSpec) -> TagObservation {
    match described {
        Err(reason) => TagObservation::Failed(reason),
        Ok(resolved) => match platform_problem(&resolved, &spec.platforms) {
            Some(reason) => TagObservation::Failed(reason),
            None => TagObservation::Resolved(resolved),
        },
    }
}

/// Details of digests that `pin:` selects but that are neither the tag's current digest nor
/// its previous pin (the lock keeps only digests for older generations).
async fn pinned_details(
    spec: &ImageSpec,
    previous: Option<&LockedImage>,
    tags: &[(String, TagObservation)],
    describer: &Describer<'_>,
) -> BTreeMap<Digest, ResolvedDigest> {
    let mut wanted = Vec::new();
    for (tag, observation) in tags {
        let (Some(generation), Some(prev)) = (
            spec.pin.generation_for(tag),
            previous.and_then(|p| p.tags.get(tag)),
        ) else {
            continue;
        };
        let Some(digest) = prev
            .history
            .iter()
            .find(|h| h.generation == generation)
            .map(|h| h.digest.clone())
        else {
            continue;
        };
        let current = matches!(observation, TagObservation::Resolved(r) if r.digest == digest);
        if !current && prev.digest != digest {
            wanted.push(digest);
        }
    }
    let mut details = BTreeMap::new();
    for digest in wanted {
        if let Ok(resolved) = describer.describe(&digest).await {
            details.insert(digest, resolved);
        }
    }
    details
}
