//! `RegistryClient` against a real docker-registry, directly or through a `FaultProxy`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use imagelock::manifest::RegistrySettings;
use imagelock::reference::{Digest, ImageRepo};
use imagelock::registry::{
    ClientConfig, CredentialStore, Logins, ParsedManifest, RegistryClient, RegistryError,
    RegistryLimits, RegistryPolicy, parse_config_platform,
};

use crate::common::{
    Fault, FaultProxy, ImageSpec, Pusher, TestRegistry, free_port, push_image, push_index,
    push_many_tags, skopeo_digest,
};

/// A client for plain-HTTP `hosts`, with short backoff so retry tests stay fast.
fn mk_client(hosts: &[&str]) -> RegistryClient {
    RegistryClient::new(mk_config(hosts)).expect("client")
}

fn mk_config(hosts: &[&str]) -> ClientConfig {
    ClientConfig {
        policy: RegistryPolicy::insecure(hosts.iter().map(|h| (*h).to_owned())),
        backoff_base: Duration::from_millis(10),
        request_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

fn mk_repo(host: &str, path: &str) -> ImageRepo {
    ImageRepo::parse(&format!("{host}/{path}")).expect("repo")
}

#[tokio::test]
async fn single_arch_tag_resolves_to_the_registry_digest() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let spec = ImageSpec {
        platform: "linux/arm/v7".parse().unwrap(),
        layers: 2,
        layer_size: 4096,
    };
    let pushed = push_image(&host, "team/web", "1.0", spec).await;
    let client = mk_client(&[&host]);
    let repo = mk_repo(&host, "team/web");

    let head = client.head_manifest(&repo, "1.0").await.unwrap().unwrap();
    assert_eq!(head.digest, pushed.digest);
    assert_eq!(head.digest, skopeo_digest(&host, "team/web", "1.0").await);
    assert_eq!(
        head.media_type,
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(head.size, pushed.bytes.len() as u64);

    let fetched = client.get_manifest(&repo, "1.0").await.unwrap().unwrap();
    assert_eq!(fetched.bytes, pushed.bytes);
    assert_eq!(fetched.digest, pushed.digest);
    let by_digest = client
        .get_manifest(&repo, pushed.digest.as_str())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_digest.bytes, pushed.bytes);

    let ParsedManifest::Image(image) = fetched.parse().unwrap() else {
        panic!("expected an image manifest");
    };
    assert_eq!(image.config.digest, pushed.config_digest);
    let layers: Vec<Digest> = image.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(layers, pushed.layer_digests);
    let config = client
        .get_blob(&repo, &image.config.digest, 1 << 20)
        .await
        .unwrap();
    assert_eq!(
        parse_config_platform(&config).unwrap().to_string(),
        "linux/arm/v7"
    );
    // A blob over the cap is refused, not read.
    let too_large = client.get_blob(&repo, &pushed.layer_digests[0], 100).await;
    assert!(
        matches!(too_large, Err(RegistryError::TooLarge { limit: 100, .. })),
        "{too_large:?}"
    );
}

#[tokio::test]
async fn multi_arch_index_resolves_with_its_children() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let pushed = push_index(
        &host,
        "team/multi",
        "latest",
        &["linux/amd64", "linux/arm64/v8"],
    )
    .await;
    let client = mk_client(&[&host]);
    let repo = mk_repo(&host, "team/multi");

    let head = client
        .head_manifest(&repo, "latest")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head.digest, pushed.digest);
    assert_eq!(
        head.digest,
        skopeo_digest(&host, "team/multi", "latest").await
    );
    assert_eq!(head.media_type, "application/vnd.oci.image.index.v1+json");

    let fetched = client.get_manifest(&repo, "latest").await.unwrap().unwrap();
    let ParsedManifest::Index(index) = fetched.parse().unwrap() else {
        panic!("expected an index");
    };
    let children: BTreeMap<String, Digest> = index
        .platform_manifests()
        .map(|(platform, d)| (platform.to_string(), d.digest.clone()))
        .collect();
    assert_eq!(children, pushed.children);

    // Each child resolves by digest to itself.
    for digest in pushed.children.values() {
        let child = client
            .head_manifest(&repo, digest.as_str())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&child.digest, digest);
        assert_eq!(
            &skopeo_digest(&host, "team/multi", digest.as_str()).await,
            digest
        );
    }
}

#[tokio::test]
async fn missing_tag_is_none_and_missing_repository_an_error_for_tags() {
    let registry = TestRegistry::start();
    let host = registry.host();
    push_image(&host, "team/web", "1.0", ImageSpec::small("linux/amd64")).await;
    let client = mk_client(&[&host]);
    let repo = mk_repo(&host, "team/web");

    assert_eq!(client.head_manifest(&repo, "nope").await.unwrap(), None);
    assert_eq!(client.get_manifest(&repo, "nope").await.unwrap(), None);
    let absent = Digest::sha256_of(b"absent");
    assert_eq!(
        client.head_manifest(&repo, absent.as_str()).await.unwrap(),
        None
    );

    let err = client
        .list_tags(&mk_repo(&host, "team/none"), &|_| true)
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("team/none") && text.contains("NAME_UNKNOWN"),
        "{text}"
    );

    let err = client.get_blob(&repo, &absent, 1024).await.unwrap_err();
    assert!(matches!(err, RegistryError::NotFound { .. }), "{err:?}");
    let err = client.head_manifest(&repo, "../../etc").await.unwrap_err();
    assert!(
        matches!(err, RegistryError::InvalidReference { .. }),
        "{err:?}"
    );
}

fn mk_tags(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("v1.{i}")).collect()
}

#[tokio::test]
async fn list_tags_over_1200_tags_all_pagination_paths() {
    let registry = TestRegistry::start();
    let tags = mk_tags(1200);
    push_many_tags(&registry.host(), "team/many", &tags).await;
    let expected: BTreeSet<String> = tags.iter().cloned().collect();

    // docker-registry 2.8 ignores n and last: one full page, one `last=` page that repeats it.
    let plain = FaultProxy::start(&registry.host()).await;
    let client = mk_client(&[&plain.host()]);
    let listed = client
        .list_tags(&mk_repo(&plain.host(), "team/many"), &|_| true)
        .await
        .unwrap();
    assert_eq!(listed.len(), 1200);
    assert_eq!(listed.iter().cloned().collect::<BTreeSet<_>>(), expected);
    let pages: Vec<String> = plain.requests().into_iter().map(|s| s.target).collect();
    assert_eq!(pages.len(), 2, "{pages:?}");
    assert_eq!(pages[0], "/v2/team/many/tags/list?n=1000");
    assert!(pages[1].contains("last="), "{pages:?}");

    // A registry that pages with Link headers.
    let linked = FaultProxy::start(&registry.host()).await;
    linked.add_rule("tags/list", Fault::PaginateTags { link: true }, None);
    let client = mk_client(&[&linked.host()]);
    let listed = client
        .list_tags(&mk_repo(&linked.host(), "team/many"), &|_| true)
        .await
        .unwrap();
    let mut sorted = tags.clone();
    sorted.sort();
    assert_eq!(listed, sorted);
    let pages: Vec<String> = linked.requests().into_iter().map(|s| s.target).collect();
    assert_eq!(
        pages,
        [
            "/v2/team/many/tags/list?n=1000".to_owned(),
            format!("/v2/team/many/tags/list?last={}&n=1000", sorted[999]),
        ]
    );

    // A registry that honours n/last but sends no Link: the client asks with `last=`.
    let unlinked = FaultProxy::start(&registry.host()).await;
    unlinked.add_rule("tags/list", Fault::PaginateTags { link: false }, None);
    let client = mk_client(&[&unlinked.host()]);
    let listed = client
        .list_tags(&mk_repo(&unlinked.host(), "team/many"), &|_| true)
        .await
        .unwrap();
    assert_eq!(listed, sorted);
    let pages: Vec<String> = unlinked.requests().into_iter().map(|s| s.target).collect();
    assert_eq!(
        pages,
        [
            "/v2/team/many/tags/list?n=1000".to_owned(),
            format!("/v2/team/many/tags/list?n=1000&last={}", sorted[999]),
        ]
    );
}

#[tokio::test]
async fn server_errors_are_retried_then_succeed() {
    let registry = TestRegistry::start();
    let pushed = push_image(
        &registry.host(),
        "team/web",
        "1.0",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let proxy = FaultProxy::start(&registry.host()).await;
    proxy.fail_with("manifests/1.0", 500, 2);
    proxy.fail_with("manifests/1.0", 503, 1);
    let client = mk_client(&[&proxy.host()]);

    let head = client
        .head_manifest(&mk_repo(&proxy.host(), "team/web"), "1.0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(head.digest, pushed.digest);
    assert_eq!(proxy.statuses(".*"), [500, 500, 503, 200]);
}

#[tokio::test]
async fn server_errors_exhaust_attempts_with_the_registry_message() {
    let registry = TestRegistry::start();
    push_image(
        &registry.host(),
        "team/web",
        "1.0",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let proxy = FaultProxy::start(&registry.host()).await;
    proxy.fail_with("manifests/1.0", 502, 100);
    let client = RegistryClient::new(ClientConfig {
        max_attempts: 3,
        ..mk_config(&[&proxy.host()])
    })
    .unwrap();

    let err = client
        .get_manifest(&mk_repo(&proxy.host(), "team/web"), "1.0")
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::Http { status: 502, .. }),
        "{err:?}"
    );
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains("injected 502") && text.contains("3 attempts"),
        "{text}"
    );
    assert_eq!(proxy.count("manifests/1.0"), 3);
}

#[tokio::test]
async fn too_many_requests_waits_for_retry_after() {
    let registry = TestRegistry::start();
    let pushed = push_image(
        &registry.host(),
        "team/web",
        "1.0",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let proxy = FaultProxy::start(&registry.host()).await;
    proxy.too_many_requests("manifests/1.0", "1", 2);
    let client = mk_client(&[&proxy.host()]);

    let fetched = client
        .get_manifest(&mk_repo(&proxy.host(), "team/web"), "1.0")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fetched.digest, pushed.digest);
    // Waited and came back, in order: two refusals, then the answer; no extra requests.
    assert_eq!(proxy.statuses(".*"), [429, 429, 200]);
    let seen = proxy.requests();
    assert!(seen[..2].iter().all(|s| s.faulted) && !seen[2].faulted);

    // Counted per registry host (this proxy's alone, though the metrics are process-wide).
    let metrics = imagelock::telemetry::encode();
    let host = proxy.host();
    for expected in [
        format!("imagelock_registry_throttled_total{{registry=\"{host}\"}} 2"),
        format!(
            "imagelock_registry_requests_total{{registry=\"{host}\",method=\"GET\",status=\"429\"}} 2"
        ),
        format!("imagelock_registry_ratelimit_remaining{{registry=\"{host}\"}} 0"),
    ] {
        assert!(
            metrics.lines().any(|line| line == expected),
            "{expected:?} missing:\n{metrics}"
        );
    }
}

#[tokio::test]
async fn retry_after_beyond_the_limit_fails_with_the_reason() {
    let registry = TestRegistry::start();
    push_image(
        &registry.host(),
        "team/web",
        "1.0",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let proxy = FaultProxy::start(&registry.host()).await;
    proxy.too_many_requests("manifests/1.0", "3600", 1);
    let client = mk_client(&[&proxy.host()]);

    let err = client
        .head_manifest(&mk_repo(&proxy.host(), "team/web"), "1.0")
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::TooManyRequests { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("3600s"), "{err}");
    assert_eq!(err.metric_label(), "too_many_requests");
    assert_eq!(proxy.count("manifests"), 1);
}

/// Eight lookups at once through a slow proxy, with the repo's `concurrency` and the
/// operator's `ceiling` for that host; the most that were in flight at once.
async fn most_in_flight(concurrency: usize, ceiling: Option<usize>) -> usize {
    let registry = TestRegistry::start();
    push_image(
        &registry.host(),
        "team/web",
        "1.0",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let proxy = FaultProxy::start(&registry.host()).await;
    proxy.add_rule("manifests", Fault::Delay(Duration::from_millis(100)), None);
    let limits = ceiling.map(|ceiling| {
        let limits = RegistryLimits {
            concurrency: Some(ceiling),
            rate_limit: None,
        };
        (proxy.host(), limits)
    });
    let client = RegistryClient::new(ClientConfig {
        registries: [(
            proxy.host(),
            RegistrySettings {
                concurrency: Some(concurrency),
                ..RegistrySettings::default()
            },
        )]
        .into(),
        policy: RegistryPolicy {
            limits: limits.into_iter().collect(),
            ..RegistryPolicy::insecure([proxy.host()])
        },
        ..mk_config(&[])
    })
    .unwrap();
    let repo = mk_repo(&proxy.host(), "team/web");
    let lookups = (0..8).map(|_| {
        let client = client.clone();
        let repo = repo.clone();
        tokio::spawn(async move { client.head_manifest(&repo, "1.0").await })
    });
    for lookup in lookups.collect::<Vec<_>>() {
        assert!(lookup.await.unwrap().unwrap().is_some());
    }
    assert_eq!(proxy.count("manifests"), 8);
    proxy.max_in_flight()
}

#[tokio::test]
async fn concurrency_per_registry_is_bounded() {
    assert_eq!(most_in_flight(2, None).await, 2);
}

#[tokio::test]
async fn the_repo_may_lower_the_operators_concurrency_ceiling_but_not_raise_it() {
    assert_eq!(most_in_flight(8, Some(1)).await, 1);
    assert_eq!(most_in_flight(1, Some(4)).await, 1);
}

/// How long five lookups at once take with the repo's `rate_limit` and the operator's
/// `ceiling` for that host.
async fn five_lookups_take(rate_limit: u32, ceiling: Option<u32>) -> Duration {
    let registry = TestRegistry::start();
    push_image(
        &registry.host(),
        "team/web",
        "1.0",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let host = registry.host();
    let limits = ceiling.map(|ceiling| {
        let limits = RegistryLimits {
            rate_limit: Some(ceiling),
            concurrency: None,
        };
        (host.clone(), limits)
    });
    let client = RegistryClient::new(ClientConfig {
        registries: [(
            host.clone(),
            RegistrySettings {
                rate_limit: Some(rate_limit),
                ..RegistrySettings::default()
            },
        )]
        .into(),
        policy: RegistryPolicy {
            limits: limits.into_iter().collect(),
            ..RegistryPolicy::insecure([host.clone()])
        },
        ..mk_config(&[])
    })
    .unwrap();
    let repo = mk_repo(&host, "team/web");
    let started = std::time::Instant::now();
    let lookups: Vec<_> = (0..5)
        .map(|_| {
            let client = client.clone();
            let repo = repo.clone();
            tokio::spawn(async move { client.head_manifest(&repo, "1.0").await })
        })
        .collect();
    for lookup in lookups {
        assert!(lookup.await.unwrap().unwrap().is_some());
    }
    started.elapsed()
}

// Five starts 50 ms apart take at least 200 ms, however fast the registry is (a lower bound
// only: a slow machine cannot make these fail).

#[tokio::test]
async fn rate_limit_spaces_request_starts() {
    let took = five_lookups_take(20, None).await;
    assert!(took >= Duration::from_millis(200), "{took:?}");
}

#[tokio::test]
async fn the_repo_cannot_raise_the_operators_rate_limit() {
    let took = five_lookups_take(100_000, Some(20)).await;
    assert!(took >= Duration::from_millis(200), "{took:?}");
}

/// A registry with `team/web:1.0` behind a proxy that demands a Bearer token (`tok-123`,
/// from its own `/token`).
async fn bearer_proxy() -> (TestRegistry, FaultProxy) {
    let registry = TestRegistry::start();
    push_image(
        &registry.host(),
        "team/web",
        "1.0",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let proxy = FaultProxy::start(&registry.host()).await;
    proxy.add_rule(
        ".*",
        Fault::RequireBearer {
            token: "tok-123".into(),
            expires_in: 300,
        },
        None,
    );
    (registry, proxy)
}

#[tokio::test]
async fn credential_scopes_never_share_tokens() {
    let (_registry, proxy) = bearer_proxy().await;
    let operator = mk_client(&[&proxy.host()]);
    let team_a = operator.with_logins(Logins::default());
    let team_b = operator.with_logins(Logins::default());
    let repo = mk_repo(&proxy.host(), "team/web");
    for client in [&team_a, &team_a, &team_b, &team_b] {
        assert!(client.head_manifest(&repo, "1.0").await.unwrap().is_some());
    }
    // One token per scope: team-b's first request was not sent with team-a's token.
    assert_eq!(proxy.count("GET /token"), 2, "{:#?}", proxy.requests());
    assert_eq!(proxy.statuses("HEAD "), [401, 200, 200, 401, 200, 200]);
}

#[tokio::test]
async fn slow_registry_times_out_after_bounded_attempts() {
    let registry = TestRegistry::start();
    push_image(
        &registry.host(),
        "team/web",
        "1.0",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let proxy = FaultProxy::start(&registry.host()).await;
    proxy.add_rule("manifests", Fault::Delay(Duration::from_secs(2)), None);
    let client = RegistryClient::new(ClientConfig {
        request_timeout: Duration::from_millis(200),
        max_attempts: 2,
        ..mk_config(&[&proxy.host()])
    })
    .unwrap();
    let err = client
        .head_manifest(&mk_repo(&proxy.host(), "team/web"), "1.0")
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Timeout { .. }), "{err:?}");
    assert!(err.is_retryable());
    assert_eq!(err.metric_label(), "timeout");
}

#[tokio::test]
async fn registry_down_is_a_connect_error() {
    let host = format!("127.0.0.1:{}", free_port());
    let client = RegistryClient::new(ClientConfig {
        max_attempts: 2,
        ..mk_config(&[&host])
    })
    .unwrap();
    let err = client
        .head_manifest(&mk_repo(&host, "team/web"), "1.0")
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Connect { .. }), "{err:?}");
    assert!(err.is_retryable());
    let text = err.to_string();
    assert!(
        text.contains(&host) && text.to_lowercase().contains("refused"),
        "{text}"
    );
}

#[tokio::test]
async fn basic_auth_with_docker_config_credentials() {
    let registry = TestRegistry::start_with_basic_auth("robot", "s3cret:pass");
    let host = registry.host();
    let pusher = Pusher::with_basic_auth(&host, "robot", "s3cret:pass");
    let pushed = pusher
        .push_image("team/private", "1.0", &ImageSpec::small("linux/amd64"))
        .await;
    let repo = mk_repo(&host, "team/private");

    // Anonymous: refused, with the registry's message and no secret in sight.
    let err = mk_client(&[&host])
        .head_manifest(&repo, "1.0")
        .await
        .unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");

    // Wrong password.
    let wrong = registry.write_docker_config("robot", "wrong-password");
    let client = RegistryClient::new(ClientConfig {
        credentials: CredentialStore::from_docker_config_file(&wrong).unwrap(),
        ..mk_config(&[&host])
    })
    .unwrap();
    let err = client.list_tags(&repo, &|_| true).await.unwrap_err();
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("wrong-password"));

    // The right credentials from a Docker config.json.
    let config = registry.write_docker_config("robot", "s3cret:pass");
    let client = RegistryClient::new(ClientConfig {
        credentials: CredentialStore::from_docker_config_file(&config).unwrap(),
        ..mk_config(&[&host])
    })
    .unwrap();
    let head = client.head_manifest(&repo, "1.0").await.unwrap().unwrap();
    assert_eq!(head.digest, pushed.digest);
    assert_eq!(client.list_tags(&repo, &|_| true).await.unwrap(), ["1.0"]);

    // The same entry chosen by name through the operator's registryCredentials.
    let mut credentials = CredentialStore::empty();
    let named = CredentialStore::from_docker_config_file(&config).unwrap();
    if let Some(login) = named.for_registry(&host) {
        credentials.insert("ci-robot", login.clone());
    }
    let client = RegistryClient::new(ClientConfig {
        credentials,
        policy: RegistryPolicy {
            credential_names: [(host.clone(), "ci-robot".to_owned())].into(),
            ..RegistryPolicy::insecure([host.clone()])
        },
        ..mk_config(&[])
    })
    .unwrap();
    assert!(client.head_manifest(&repo, "1.0").await.unwrap().is_some());
}

#[tokio::test]
async fn bearer_token_is_fetched_once_and_reused() {
    let (_registry, proxy) = bearer_proxy().await;
    let client = mk_client(&[&proxy.host()]);
    let repo = mk_repo(&proxy.host(), "team/web");

    assert!(client.head_manifest(&repo, "1.0").await.unwrap().is_some());
    assert!(client.get_manifest(&repo, "1.0").await.unwrap().is_some());
    assert_eq!(client.list_tags(&repo, &|_| true).await.unwrap(), ["1.0"]);

    let seen = proxy.requests();
    let summary: Vec<(String, u16, bool)> = seen
        .iter()
        .map(|s| {
            let path = s.target.split('?').next().unwrap_or_default().to_owned();
            (format!("{} {path}", s.method), s.status, s.authorized)
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("HEAD /v2/team/web/manifests/1.0".to_owned(), 401, false),
            ("GET /token".to_owned(), 200, false),
            ("HEAD /v2/team/web/manifests/1.0".to_owned(), 200, true),
            // Pre-authorized from the cache: no second challenge, no second token.
            ("GET /v2/team/web/manifests/1.0".to_owned(), 200, true),
            ("GET /v2/team/web/tags/list".to_owned(), 200, true),
        ]
    );
    let token_request = &seen[1].target;
    assert!(
        token_request.contains("service=fault-proxy")
            && token_request.contains("scope=repository%3Ateam%2Fweb%3Apull"),
        "{token_request}"
    );
}

#[tokio::test]
async fn lying_proxy_is_caught_by_digest_verification() {
    let registry = TestRegistry::start();
    let pushed = push_image(
        &registry.host(),
        "team/web",
        "1.0",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let proxy = FaultProxy::start(&registry.host()).await;
    let client = mk_client(&[&proxy.host()]);
    let repo = mk_repo(&proxy.host(), "team/web");
    let wrong = Digest::sha256_of(b"not the manifest");

    // A Docker-Content-Digest header that does not match the bytes.
    proxy.add_rule(
        "GET .*manifests/1.0",
        Fault::ReplaceHeader {
            name: "Docker-Content-Digest".into(),
            value: wrong.to_string(),
        },
        Some(1),
    );
    let err = client.get_manifest(&repo, "1.0").await.unwrap_err();
    match &err {
        RegistryError::DigestMismatch {
            expected, actual, ..
        } => {
            assert_eq!(expected, &wrong);
            assert_eq!(actual, &pushed.digest);
        }
        other => panic!("expected DigestMismatch, got {other:?}"),
    }
    assert!(!err.is_retryable());

    // Corrupted bytes fetched by digest.
    proxy.add_rule("GET .*manifests/sha256", Fault::CorruptBody, Some(1));
    let err = client
        .get_manifest(&repo, pushed.digest.as_str())
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );

    proxy.add_rule("GET .*blobs/", Fault::CorruptBody, Some(1));
    let err = client
        .get_blob(&repo, &pushed.config_digest, 1 << 20)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );

    // A body cut short is a network failure, retried.
    proxy.add_rule("GET .*blobs/", Fault::DropMidBody, Some(1));
    let config = client
        .get_blob(&repo, &pushed.config_digest, 1 << 20)
        .await
        .unwrap();
    assert!(pushed.config_digest.verifies(&config));
}
