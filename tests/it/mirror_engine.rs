//! `MirrorEngine` between two real registries (source and destination), with a `FaultProxy`
//! in front of one of them where a fault or a request count is needed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use imagelock::manifest::RegistrySettings;
use imagelock::mirror::progress::{Progress, Silent};
use imagelock::mirror::{CopyReport, CopyRequest, EngineOptions, MirrorEngine, MirrorError};
use imagelock::reference::{Digest, ImageRepo};
use imagelock::registry::{ClientConfig, RegistryClient, RegistryPolicy};
use serde_json::json;

use crate::common::{
    Fault, FaultProxy, ImageSpec, PushedImage, Pusher, TestRegistry, push_image, push_index,
    skopeo_digest,
};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The tests' client settings: plain HTTP to `hosts`, short backoff and timeouts.
fn mk_client_config(hosts: &[&str]) -> ClientConfig {
    ClientConfig {
        policy: RegistryPolicy::insecure(hosts.iter().map(|h| (*h).to_owned())),
        backoff_base: Duration::from_millis(10),
        request_timeout: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(10),
        ..ClientConfig::default()
    }
}

fn mk_client(hosts: &[&str]) -> RegistryClient {
    RegistryClient::new(mk_client_config(hosts)).expect("client")
}

fn mk_engine(hosts: &[&str]) -> MirrorEngine {
    mk_engine_with(hosts, Arc::new(Silent))
}

fn mk_engine_with(hosts: &[&str], progress: Arc<dyn Progress>) -> MirrorEngine {
    MirrorEngine::new(mk_client(hosts), EngineOptions::default(), progress)
}

fn mk_engine_with_options(hosts: &[&str], options: EngineOptions) -> MirrorEngine {
    MirrorEngine::new(mk_client(hosts), options, Arc::new(Silent))
}

fn mk_repo(host: &str, path: &str) -> ImageRepo {
    ImageRepo::parse(&format!("{host}/{path}")).expect("repo")
}

fn mk_request(
    source: &ImageRepo,
    digest: &Digest,
    destination: &ImageRepo,
    tags: &[&str],
) -> CopyRequest {
    CopyRequest {
        source: source.clone(),
        digest: digest.clone(),
        destination: destination.clone(),
        tags: tags.iter().map(|t| (*t).to_owned()).collect(),
        platforms: Vec::new(),
    }
}

/// Copies `digest` from `src/from` to `dst/to` (tagged `tags`), in a run of its own.
async fn copy_one(
    src: &str,
    from: &str,
    digest: &Digest,
    dst: &str,
    to: &str,
    tags: &[&str],
) -> Result<CopyReport, MirrorError> {
    mk_engine(&[src, dst])
        .copy(&mk_request(
            &mk_repo(src, from),
            digest,
            &mk_repo(dst, to),
            tags,
        ))
        .await
}

/// A source and a destination registry, a `FaultProxy` in front of the destination, and the
/// hosts to copy between (the second is the proxy's).
async fn proxied_destination() -> (TestRegistry, TestRegistry, FaultProxy, String, String) {
    let (source, destination) = (TestRegistry::start(), TestRegistry::start());
    let proxy = FaultProxy::start(&destination.host()).await;
    let (src, dst) = (source.host(), proxy.host());
    (source, destination, proxy, src, dst)
}

fn random_bytes(len: usize) -> Vec<u8> {
    std::iter::repeat_with(|| fastrand::u8(..))
        .take(len)
        .collect()
}

/// Pushes an image made of exactly `layers` (and a config unique to `tag`); returns its
/// manifest digest.
async fn push_layers(pusher: &Pusher, repo: &str, tag: &str, layers: &[Vec<u8>]) -> Digest {
    let mut descriptors = Vec::new();
    for layer in layers {
        let digest = pusher.push_blob(repo, layer).await;
        descriptors.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest.as_str(),
            "size": layer.len(),
        }));
    }
    let config = serde_json::to_vec(&json!({
        "architecture": "amd64", "os": "linux", "config": {"Labels": {"image": format!("{repo}:{tag}")}},
        "rootfs": {"type": "layers", "diff_ids": []},
    }))
    .unwrap();
    let config_digest = pusher.push_blob(repo, &config).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest.as_str(), "size": config.len()},
        "layers": descriptors,
    }))
    .unwrap();
    pusher
        .put_manifest(repo, tag, OCI_MANIFEST, &manifest)
        .await;
    Digest::sha256_of(&manifest)
}

/// `skopeo copy --all` from the registry into an OCI layout; asserts every blob in the layout
/// hashes to its file name. Returns how many blobs there were.
async fn assert_pullable(host: &str, repo: &str, digest: &Digest) -> usize {
    let dir = tempfile::tempdir().unwrap();
    let output = tokio::process::Command::new("skopeo")
        .args(["copy", "--all", "--src-tls-verify=false"])
        .arg(format!("docker://{host}/{repo}@{digest}"))
        .arg(format!("oci:{}:x", dir.path().display()))
        .output()
        .await
        .expect("run skopeo");
    assert!(
        output.status.success(),
        "skopeo copy failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut count = 0;
    for entry in std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap() {
        let entry = entry.unwrap();
        let bytes = std::fs::read(entry.path()).unwrap();
        let name = entry.file_name().into_string().unwrap();
        assert_eq!(
            Digest::sha256_of(&bytes).hex(),
            name,
            "blob {name} in the OCI layout does not hash to its name"
        );
        count += 1;
    }
    count
}

/// Counts the bytes and blobs the engine reports.
#[derive(Default)]
struct Counting {
    bytes: AtomicU64,
    blobs_started: AtomicU64,
    blobs_finished: AtomicU64,
    images_ok: AtomicU64,
}

impl Progress for Counting {
    fn image_finished(&self, _image: &str, ok: bool) {
        if ok {
            self.images_ok.fetch_add(1, Ordering::Relaxed);
        }
    }
    fn blob_started(&self, _digest: &Digest, _size: u64) {
        self.blobs_started.fetch_add(1, Ordering::Relaxed);
    }
    fn bytes(&self, count: u64) {
        self.bytes.fetch_add(count, Ordering::Relaxed);
    }
    fn blob_finished(&self, _digest: &Digest) {
        self.blobs_finished.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn single_and_multi_arch_images_arrive_byte_identical() {
    let (source, destination) = (TestRegistry::start(), TestRegistry::start());
    let (src, dst) = (source.host(), destination.host());
    let spec = ImageSpec {
        platform: "linux/amd64".parse().unwrap(),
        layers: 3,
        layer_size: 200 * 1024,
    };
    let image = push_image(&src, "team/web", "1.0", spec).await;
    let index = push_index(
        &src,
        "team/multi",
        "2.0",
        &["linux/amd64", "linux/arm64/v8"],
    )
    .await;
    let progress = Arc::new(Counting::default());
    let engine = mk_engine_with(&[&src, &dst], progress.clone());
    let requests = vec![
        mk_request(
            &mk_repo(&src, "team/web"),
            &image.digest,
            &mk_repo(&dst, "mirror/web"),
            &["1.0", "stable"],
        ),
        mk_request(
            &mk_repo(&src, "team/multi"),
            &index.digest,
            &mk_repo(&dst, "mirror/multi"),
            &["2.0"],
        ),
    ];
    assert!(!engine.is_present(&requests[0]).await.unwrap());
    assert!(engine.exists_at_source(&requests[0]).await.unwrap());

    let results = engine.copy_all(requests.clone()).await;
    let reports: Vec<CopyReport> = results.into_iter().map(|(_, r)| r.expect("copy")).collect();
    assert_eq!(reports[0].blobs_uploaded, 4);
    assert!(
        reports[0].bytes_uploaded > 3 * 200 * 1024,
        "layers and config"
    );
    assert_eq!(
        reports[0].manifests_pushed, 2,
        "the image stored under its first tag, then the second tag"
    );
    assert_eq!(
        reports[1].manifests_pushed, 3,
        "two children, then the index under its tag"
    );
    assert_eq!(progress.images_ok.load(Ordering::Relaxed), 2);
    assert_eq!(progress.blobs_started.load(Ordering::Relaxed), 8);
    assert_eq!(progress.blobs_finished.load(Ordering::Relaxed), 8);
    let bytes: u64 = reports.iter().map(|r| r.bytes_uploaded).sum();
    assert_eq!(progress.bytes.load(Ordering::Relaxed), bytes);

    assert!(engine.is_present(&requests[0]).await.unwrap());
    for tag in ["1.0", "stable", &image.digest.to_string()] {
        assert_eq!(skopeo_digest(&dst, "mirror/web", tag).await, image.digest);
    }
    assert_eq!(
        skopeo_digest(&dst, "mirror/multi", "2.0").await,
        index.digest
    );
    for (platform, child) in &index.children {
        assert_eq!(
            skopeo_digest(&dst, "mirror/multi", child.as_str()).await,
            *child,
            "{platform}"
        );
    }
    // config + 3 layers + manifest
    assert_eq!(assert_pullable(&dst, "mirror/web", &image.digest).await, 5);
    // per child: config + layer + manifest; and the index
    assert_eq!(
        assert_pullable(&dst, "mirror/multi", &index.digest).await,
        7
    );
}

#[tokio::test]
async fn corrupt_blob_fails_its_image_and_is_never_stored() {
    let (source, destination) = (TestRegistry::start(), TestRegistry::start());
    let proxy = FaultProxy::start(&source.host()).await;
    let (src, dst) = (proxy.host(), destination.host());
    let pusher = Pusher::new(&source.host());
    let bad_layer = random_bytes(100 * 1024);
    let bad = push_layers(
        &pusher,
        "team/bad",
        "1",
        &[bad_layer.clone(), random_bytes(1000)],
    )
    .await;
    let good = push_layers(&pusher, "team/good", "1", &[random_bytes(50 * 1024)]).await;
    let bad_digest = Digest::sha256_of(&bad_layer);
    proxy.add_rule(
        &format!("^GET /v2/team/bad/blobs/{bad_digest}"),
        Fault::CorruptBody,
        None,
    );
    let engine = mk_engine(&[&src, &dst]);
    let results = engine
        .copy_all(vec![
            mk_request(
                &mk_repo(&src, "team/bad"),
                &bad,
                &mk_repo(&dst, "m/bad"),
                &["1"],
            ),
            mk_request(
                &mk_repo(&src, "team/good"),
                &good,
                &mk_repo(&dst, "m/good"),
                &["1"],
            ),
        ])
        .await;
    match &results[0].1 {
        Err(MirrorError::Corrupt {
            expected, actual, ..
        }) => {
            assert_eq!(*expected, bad_digest);
            assert_ne!(*actual, bad_digest);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    results[1].1.as_ref().expect("the other image copies");
    let client = mk_client(&[&dst]);
    assert_eq!(
        client
            .blob_exists(&mk_repo(&dst, "m/bad"), &bad_digest)
            .await
            .unwrap(),
        None,
        "nothing may be stored under the digest"
    );
    assert!(
        client
            .head_manifest(&mk_repo(&dst, "m/bad"), "1")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(skopeo_digest(&dst, "m/good", "1").await, good);
}

/// Copies a one-layer image through a proxy in front of the source that applies `faults` to
/// the layer's GETs, with a client whose streams may pause `idle`. Returns the statuses the
/// proxy gave those GETs (so far); checks that the layer arrived whole.
async fn copy_through_faulty_source(faults: Vec<Fault>, idle: Duration) -> Vec<u16> {
    let (source, destination) = (TestRegistry::start(), TestRegistry::start());
    let proxy = FaultProxy::start(&source.host()).await;
    let (src, dst) = (proxy.host(), destination.host());
    let pusher = Pusher::new(&source.host());
    let layer = random_bytes(512 * 1024);
    let digest = push_layers(&pusher, "team/web", "1", std::slice::from_ref(&layer)).await;
    let layer_digest = Digest::sha256_of(&layer);
    let blob_get = format!("^GET /v2/team/web/blobs/{layer_digest}");
    for fault in faults {
        proxy.add_rule(&blob_get, fault, Some(1));
    }
    let client = RegistryClient::new(ClientConfig {
        idle_timeout: idle,
        ..mk_client_config(&[&src, &dst])
    })
    .expect("client");
    let report = MirrorEngine::new(client, EngineOptions::default(), Arc::new(Silent))
        .copy(&mk_request(
            &mk_repo(&src, "team/web"),
            &digest,
            &mk_repo(&dst, "m/web"),
            &[],
        ))
        .await
        .expect("copy");
    assert_eq!(report.blobs_uploaded, 2);
    let stored = mk_client(&[&dst])
        .get_blob(&mk_repo(&dst, "m/web"), &layer_digest, 1 << 20)
        .await
        .expect("the blob is at the destination and verifies");
    assert_eq!(stored, layer);
    proxy.statuses(&blob_get)
}

#[tokio::test]
async fn dropped_source_connection_is_resumed_with_range() {
    let statuses =
        copy_through_faulty_source(vec![Fault::DropMidBody], Duration::from_secs(10)).await;
    assert_eq!(statuses, [0, 206], "a dropped GET, then a Range resume");
}

#[tokio::test]
async fn a_source_that_goes_silent_mid_blob_is_resumed_with_range() {
    // A second of silence is a stalled download; the resume then takes its time to answer,
    // while the upload waits.
    let statuses = copy_through_faulty_source(
        vec![
            Fault::StallMidBody,
            Fault::Delay(Duration::from_millis(700)),
        ],
        Duration::from_secs(1),
    )
    .await;
    // The silent GET is still held open by the proxy, so not listed yet; after it, only the
    // Range resume: the upload waited for it instead of failing and starting over.
    assert_eq!(statuses, [206]);
}

#[tokio::test]
async fn a_slow_image_does_not_hold_back_the_next_ones() {
    let (source, destination) = (TestRegistry::start(), TestRegistry::start());
    let proxy = FaultProxy::start(&source.host()).await;
    let (src, dst) = (proxy.host(), destination.host());
    let mut requests = Vec::new();
    for repo in ["team/slow", "team/b", "team/c"] {
        let image = push_image(&source.host(), repo, "1", ImageSpec::small("linux/amd64")).await;
        requests.push(mk_request(
            &mk_repo(&src, repo),
            &image.digest,
            &mk_repo(&dst, &format!("m/{repo}")),
            &["1"],
        ));
    }
    proxy.add_rule(
        "^GET /v2/team/slow/manifests/",
        Fault::Delay(Duration::from_secs(3)),
        Some(1),
    );
    let engine = mk_engine_with_options(
        &[&src, &dst],
        EngineOptions {
            images_in_flight: 2,
            ..EngineOptions::default()
        },
    );
    let results = engine.copy_all(requests).await;
    let order: Vec<&str> = results
        .iter()
        .map(|(r, _)| r.source.repository.as_str())
        .collect();
    assert_eq!(
        order,
        ["team/slow", "team/b", "team/c"],
        "results in request order"
    );
    assert!(results.iter().all(|(_, result)| result.is_ok()));
    // The proxy lists a request once answered: the third image was fetched while the first
    // was still held, as soon as the second one was done.
    let fetched: Vec<String> = proxy
        .requests_matching("^GET /v2/team/[^/]+/manifests/sha256:")
        .iter()
        .map(|seen| seen.target.split('/').nth(3).unwrap_or_default().to_owned())
        .collect();
    assert_eq!(fetched, ["b", "c", "slow"], "{fetched:?}");
}

#[tokio::test]
async fn the_largest_blob_goes_first() {
    let (_source, _destination, proxy, src, dst) = proxied_destination().await;
    let pusher = Pusher::new(&src);
    let small = random_bytes(10 * 1024);
    let large = random_bytes(600 * 1024);
    let digest = push_layers(&pusher, "team/web", "1", &[small.clone(), large.clone()]).await;
    // One transfer at a time: the order they queue in is the order they go.
    let engine = mk_engine_with_options(
        &[&src, &dst],
        EngineOptions {
            blobs_in_flight: 1,
            ..EngineOptions::default()
        },
    );
    engine
        .copy(&mk_request(
            &mk_repo(&src, "team/web"),
            &digest,
            &mk_repo(&dst, "m/web"),
            &[],
        ))
        .await
        .expect("copy");
    let uploads = proxy.requests_matching("^PUT /v2/m/web/blobs/uploads/");
    assert_eq!(uploads.len(), 3, "config, small and large layer");
    let first = Digest::sha256_of(&large).as_str().replace(':', "%3A");
    assert!(
        uploads[0].target.ends_with(&format!("digest={first}")),
        "the large layer first, though it alone is HEADed before: {uploads:#?}"
    );
}

#[tokio::test]
async fn second_run_only_heads() {
    let (_source, _destination, proxy, src, dst) = proxied_destination().await;
    let image = push_image(&src, "team/web", "1.0", ImageSpec::small("linux/amd64")).await;
    let index = push_index(&src, "team/multi", "2.0", &["linux/amd64", "linux/arm64"]).await;
    let requests = vec![
        mk_request(
            &mk_repo(&src, "team/web"),
            &image.digest,
            &mk_repo(&dst, "m/web"),
            &["1.0"],
        ),
        mk_request(
            &mk_repo(&src, "team/multi"),
            &index.digest,
            &mk_repo(&dst, "m/multi"),
            &["2.0"],
        ),
    ];
    for (_, result) in mk_engine(&[&src, &dst]).copy_all(requests.clone()).await {
        result.expect("first run");
    }
    let before = proxy.requests().len();
    assert!(proxy.count("^POST /v2/.*/blobs/uploads/") > 0);

    for (_, result) in mk_engine(&[&src, &dst]).copy_all(requests).await {
        let report = result.expect("second run");
        assert_eq!(
            report,
            CopyReport {
                manifests_present: 1,
                ..CopyReport::default()
            }
        );
    }
    let second: Vec<String> = proxy.requests()[before..]
        .iter()
        .map(|s| format!("{} {}", s.method, s.target))
        .collect();
    assert_eq!(
        second.len(),
        4,
        "a HEAD by digest and one per tag: {second:?}"
    );
    assert!(second.iter().all(|r| r.starts_with("HEAD ")), "{second:?}");
}

#[tokio::test]
async fn shared_layers_are_uploaded_once_per_run() {
    let (_source, destination, proxy, src, dst) = proxied_destination().await;
    let pusher = Pusher::new(&src);
    let shared = [random_bytes(300 * 1024), random_bytes(20 * 1024)];
    let mut digests = Vec::new();
    for (i, repo) in ["team/a", "team/b", "team/c"].iter().enumerate() {
        let layers = [shared[0].clone(), shared[1].clone(), random_bytes(1000 + i)];
        digests.push(push_layers(&pusher, repo, "1", &layers).await);
    }
    // a and b go to the same destination repository, c to another one.
    let requests = vec![
        mk_request(
            &mk_repo(&src, "team/a"),
            &digests[0],
            &mk_repo(&dst, "m/one"),
            &["a"],
        ),
        mk_request(
            &mk_repo(&src, "team/b"),
            &digests[1],
            &mk_repo(&dst, "m/one"),
            &["b"],
        ),
        mk_request(
            &mk_repo(&src, "team/c"),
            &digests[2],
            &mk_repo(&dst, "m/two"),
            &["c"],
        ),
    ];
    let results = mk_engine(&[&src, &dst]).copy_all(requests).await;
    let mut total = CopyReport::default();
    for (_, result) in &results {
        total.add(result.as_ref().expect("copy"));
    }
    for layer in &shared {
        let digest = Digest::sha256_of(layer);
        let encoded = digest.as_str().replace(':', "%3A");
        assert_eq!(
            proxy.count(&format!("^PUT /v2/.*/blobs/uploads/.*digest={encoded}")),
            1,
            "{digest} uploaded once"
        );
        let mounts =
            proxy.requests_matching(&format!("^POST /v2/m/.*/blobs/uploads/\\?mount={encoded}"));
        assert_eq!(
            mounts.len(),
            1,
            "{digest} mounted into the other repository"
        );
        assert_eq!(mounts[0].status, 201);
    }
    // 2 shared layers + 3 own layers + 3 configs uploaded; 2 shared mounted; 2 present.
    assert_eq!(total.blobs_uploaded, 8);
    assert_eq!(total.blobs_mounted, 2);
    assert_eq!(total.blobs_present, 2);
    for (i, repo) in ["m/one", "m/one", "m/two"].iter().enumerate() {
        assert_pullable(&destination.host(), repo, &digests[i]).await;
    }
}

#[tokio::test]
async fn a_shared_blob_that_failed_for_one_image_is_still_copied_for_another() {
    let (_source, destination, proxy, src, dst) = proxied_destination().await;
    let pusher = Pusher::new(&src);
    let base = random_bytes(40 * 1024);
    let a = push_layers(&pusher, "team/a", "1", &[base.clone(), random_bytes(900)]).await;
    let b = push_layers(&pusher, "team/b", "1", &[base.clone(), random_bytes(901)]).await;
    proxy.add_rule(
        "^POST /v2/m/denied/blobs/uploads/",
        Fault::Respond {
            status: 403,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: r#"{"errors":[{"code":"DENIED","message":"no push to m/denied"}]}"#.into(),
        },
        None,
    );
    // One engine, one run: the first image fails on the blob both images share.
    let engine = mk_engine(&[&src, &dst]);
    let denied = engine
        .copy(&mk_request(
            &mk_repo(&src, "team/a"),
            &a,
            &mk_repo(&dst, "m/denied"),
            &["1"],
        ))
        .await
        .expect_err("m/denied refuses uploads");
    assert!(
        denied.to_string().contains("no push to m/denied"),
        "{denied}"
    );
    let report = engine
        .copy(&mk_request(
            &mk_repo(&src, "team/b"),
            &b,
            &mk_repo(&dst, "m/ok"),
            &["1"],
        ))
        .await
        .expect("the other image's failure is not this one's");
    assert_eq!(report.blobs_uploaded, 3, "shared layer, own layer, config");
    assert_pullable(&destination.host(), "m/ok", &b).await;
}

#[tokio::test]
async fn same_registry_copy_mounts_instead_of_uploading() {
    let registry = TestRegistry::start();
    let proxy = FaultProxy::start(&registry.host()).await;
    let host = proxy.host();
    let image = push_image(
        &registry.host(),
        "team/web",
        "1.0",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let report = mk_engine(&[&host])
        .copy(&mk_request(
            &mk_repo(&host, "team/web"),
            &image.digest,
            &mk_repo(&host, "mirror/web"),
            &["1.0"],
        ))
        .await
        .expect("copy");
    assert_eq!(report.blobs_mounted, 2);
    assert_eq!(report.blobs_uploaded, 0);
    assert_eq!(report.bytes_uploaded, 0);
    assert_eq!(
        proxy.count("^(PUT|PATCH) /v2/.*/blobs/uploads/"),
        0,
        "no byte upload"
    );
    assert_eq!(proxy.count("^GET /v2/.*/blobs/"), 0, "no blob download");
    let mounts = proxy.requests_matching("^POST /v2/mirror/web/blobs/uploads/\\?mount=");
    assert_eq!(mounts.len(), 2);
    assert!(mounts.iter().all(|s| s.status == 201));
    assert_eq!(
        skopeo_digest(&host, "mirror/web", "1.0").await,
        image.digest
    );
}

#[tokio::test]
async fn platform_subset_keeps_the_index_digest() {
    let (source, destination) = (TestRegistry::start(), TestRegistry::start());
    let (src, dst) = (source.host(), destination.host());
    let index = push_index(
        &src,
        "team/multi",
        "1",
        &["linux/amd64", "linux/arm64/v8", "linux/s390x"],
    )
    .await;
    let engine = mk_engine(&[&src, &dst]);
    let mut request = mk_request(
        &mk_repo(&src, "team/multi"),
        &index.digest,
        &mk_repo(&dst, "m/multi"),
        &["1"],
    );
    request.platforms = vec![
        "linux/arm64".parse().unwrap(),
        "linux/amd64".parse().unwrap(),
    ];
    engine.copy(&request).await.expect("copy");
    assert_eq!(skopeo_digest(&dst, "m/multi", "1").await, index.digest);
    let client = mk_client(&[&dst]);
    for platform in ["linux/amd64", "linux/arm64/v8"] {
        let child = &index.children[platform];
        let head = client
            .head_manifest(&mk_repo(&dst, "m/multi"), child.as_str())
            .await
            .unwrap();
        assert_eq!(head.map(|d| d.digest).as_ref(), Some(child), "{platform}");
    }

    request.platforms = vec!["linux/riscv64".parse().unwrap()];
    request.destination = mk_repo(&dst, "m/other");
    match engine.copy(&request).await {
        Err(MirrorError::MissingPlatforms { missing, .. }) => assert_eq!(missing, "linux/riscv64"),
        other => panic!("expected MissingPlatforms, got {other:?}"),
    }
}

#[tokio::test]
async fn cosign_signature_tag_is_copied_along() {
    let (source, destination) = (TestRegistry::start(), TestRegistry::start());
    let (src, dst) = (source.host(), destination.host());
    let pusher = Pusher::new(&src);
    let image = push_image(&src, "team/web", "1.0", ImageSpec::small("linux/amd64")).await;
    let (sig_tag, signature) = pusher
        .push_cosign_signature("team/web", &image.digest)
        .await;

    let report = copy_one(&src, "team/web", &image.digest, &dst, "m/web", &["1.0"])
        .await
        .expect("copy");
    assert_eq!(report.referrers, 1);
    assert_eq!(
        skopeo_digest(&dst, "m/web", &sig_tag).await,
        Digest::sha256_of(&signature)
    );
    assert_pullable(&dst, "m/web", &Digest::sha256_of(&signature)).await;
}

#[tokio::test]
async fn a_signature_made_after_the_copy_arrives_with_the_next_run() {
    let (source, destination) = (TestRegistry::start(), TestRegistry::start());
    let (src, dst) = (source.host(), destination.host());
    let image = push_image(&src, "team/web", "1.0", ImageSpec::small("linux/amd64")).await;
    let first = copy_one(&src, "team/web", &image.digest, &dst, "m/web", &["1.0"])
        .await
        .expect("copy");
    assert_eq!((first.manifests_pushed, first.referrers), (1, 0));

    // Signed at the source once the mirror already holds the image.
    let (sig_tag, signature) = Pusher::new(&src)
        .push_cosign_signature("team/web", &image.digest)
        .await;
    let second = copy_one(&src, "team/web", &image.digest, &dst, "m/web", &["1.0"])
        .await
        .expect("copy");
    assert_eq!(second.manifests_present, 1);
    assert_eq!((second.manifests_pushed, second.referrers), (1, 1));
    assert_eq!(
        skopeo_digest(&dst, "m/web", &sig_tag).await,
        Digest::sha256_of(&signature)
    );
}

/// An artifact naming `subject` as its subject, pushed by digest as `oras attach` does.
/// Returns its digest and its entry in a referrers list.
async fn push_referrer(
    pusher: &Pusher,
    repo: &str,
    subject: &PushedImage,
    artifact_type: &str,
) -> (Digest, serde_json::Value) {
    let content = format!(r#"{{"artifact":"{artifact_type}"}}"#).into_bytes();
    let content_digest = pusher.push_blob(repo, &content).await;
    let config_digest = pusher.push_blob(repo, b"{}").await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.as_str(), "size": 2},
        "layers": [{"mediaType": artifact_type, "digest": content_digest.as_str(), "size": content.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.digest.as_str(), "size": subject.bytes.len()},
    }))
    .unwrap();
    let digest = Digest::sha256_of(&manifest);
    pusher
        .put_manifest(repo, digest.as_str(), OCI_MANIFEST, &manifest)
        .await;
    let entry = json!({
        "mediaType": OCI_MANIFEST,
        "digest": digest.as_str(),
        "size": manifest.len(),
        "artifactType": artifact_type,
    });
    (digest, entry)
}

#[tokio::test]
async fn a_source_referrers_tag_is_merged_into_the_destination_one_not_copied_over_it() {
    let (source, destination) = (TestRegistry::start(), TestRegistry::start());
    let (src, dst) = (source.host(), destination.host());
    let at_source = Pusher::new(&src);
    let image = at_source
        .push_image("team/web", "1.0", &ImageSpec::small("linux/amd64"))
        .await;
    let tag = format!("sha256-{}", image.digest.hex());
    let (_, sbom) = push_referrer(&at_source, "team/web", &image, "application/spdx+json").await;
    let index = |entries: &[&serde_json::Value]| {
        serde_json::to_vec(
            &json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}),
        )
        .unwrap()
    };
    at_source
        .put_manifest("team/web", &tag, OCI_INDEX, &index(&[&sbom]))
        .await;
    let first = copy_one(&src, "team/web", &image.digest, &dst, "m/web", &["1.0"])
        .await
        .expect("copy");
    assert_eq!(first.referrers, 1);

    // Someone attests the image at the mirror, and lists it in the mirror's referrers tag.
    let at_mirror = Pusher::new(&dst);
    let (_, attestation) =
        push_referrer(&at_mirror, "m/web", &image, "application/vnd.in-toto+json").await;
    at_mirror
        .put_manifest("m/web", &tag, OCI_INDEX, &index(&[&sbom, &attestation]))
        .await;
    let again = copy_one(&src, "team/web", &image.digest, &dst, "m/web", &["1.0"])
        .await
        .expect("copy");
    assert_eq!(again.manifests_pushed, 0, "nothing new at the source");
    let listed = mk_client(&[&dst])
        .get_manifest(&mk_repo(&dst, "m/web"), &tag)
        .await
        .expect("get")
        .expect("the referrers tag");
    let listed: serde_json::Value = serde_json::from_slice(&listed.bytes).unwrap();
    assert_eq!(listed["manifests"], json!([sbom, attestation]), "both kept");
}

#[tokio::test]
async fn api_referrers_are_listed_in_the_referrers_tag_of_a_destination_without_the_api() {
    let (source, destination) = (TestRegistry::start(), TestRegistry::start());
    let source_proxy = FaultProxy::start(&source.host()).await;
    let (src, dst) = (source_proxy.host(), destination.host());
    let pusher = Pusher::new(&source.host());
    let image = pusher
        .push_image("team/web", "1.0", &ImageSpec::small("linux/amd64"))
        .await;
    let (referrer_digest, entry) =
        push_referrer(&pusher, "team/web", &image, "application/spdx+json").await;
    // distribution 2.8 has no referrers API: the proxy answers for the source.
    source_proxy.add_rule(
        &format!("^GET /v2/team/web/referrers/{}", image.digest),
        Fault::Respond {
            status: 200,
            headers: vec![("Content-Type".into(), OCI_INDEX.into())],
            body: json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [entry]})
                .to_string(),
        },
        None,
    );

    let report = copy_one(&src, "team/web", &image.digest, &dst, "m/web", &["1.0"])
        .await
        .expect("copy");
    assert_eq!(report.referrers, 1);
    let client = mk_client(&[&dst]);
    let mirror = mk_repo(&dst, "m/web");
    let copied = client
        .get_manifest(&mirror, referrer_digest.as_str())
        .await
        .expect("get");
    assert!(copied.is_some(), "the referrer itself is in the mirror");
    let tag = format!("sha256-{}", image.digest.hex());
    let listed = client
        .get_manifest(&mirror, &tag)
        .await
        .expect("get")
        .expect("the destination has no referrers API: the referrers tag lists it");
    let index: serde_json::Value = serde_json::from_slice(&listed.bytes).unwrap();
    assert_eq!(index["manifests"], json!([entry]));

    let again = copy_one(&src, "team/web", &image.digest, &dst, "m/web", &["1.0"])
        .await
        .expect("copy");
    assert_eq!(
        (again.referrers, again.manifests_pushed),
        (1, 0),
        "listed already"
    );
}

#[tokio::test]
async fn refused_monolithic_put_falls_back_to_chunked_patch() {
    let (_source, destination, proxy, src, dst) = proxied_destination().await;
    let pusher = Pusher::new(&src);
    let layer = random_bytes(100 * 1024);
    let digest = push_layers(&pusher, "team/web", "1", std::slice::from_ref(&layer)).await;
    proxy.add_rule(
        "^PUT /v2/m/web/blobs/uploads/",
        Fault::Respond {
            status: 405,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body:
                r#"{"errors":[{"code":"UNSUPPORTED","message":"monolithic uploads are disabled"}]}"#
                    .into(),
        },
        Some(1),
    );
    let report = copy_one(&src, "team/web", &digest, &dst, "m/web", &[])
        .await
        .expect("copy");
    assert_eq!(report.blobs_uploaded, 2);
    assert!(
        proxy.count("^PATCH /v2/m/web/blobs/uploads/") >= 1,
        "chunked PATCH after the refusal"
    );
    assert_pullable(&destination.host(), "m/web", &digest).await;
}

#[tokio::test]
async fn a_busy_destination_gets_the_upload_again_after_it_asked() {
    let (_source, destination, proxy, src, dst) = proxied_destination().await;
    let pusher = Pusher::new(&src);
    let layer = random_bytes(100 * 1024);
    let digest = push_layers(&pusher, "team/web", "1", std::slice::from_ref(&layer)).await;
    let uploads = "^PUT /v2/m/web/blobs/uploads/";
    // A streamed PUT cannot be sent again: each refusal costs a new upload session.
    proxy.too_many_requests(uploads, "1", 1);
    proxy.fail_with(uploads, 503, 1);
    let report = copy_one(&src, "team/web", &digest, &dst, "m/web", &[])
        .await
        .expect("429 and 503 on an upload are waited out");
    assert_eq!(report.blobs_uploaded, 2);
    let statuses: Vec<u16> = proxy.statuses(uploads);
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 2);
    assert_eq!(
        proxy.count("^POST /v2/m/web/blobs/uploads/"),
        4,
        "a new session for each upload sent again"
    );
    assert_pullable(&destination.host(), "m/web", &digest).await;
}

#[tokio::test]
async fn a_closing_put_whose_answer_was_lost_is_not_a_failure() {
    let (_source, destination, proxy, src, dst) = proxied_destination().await;
    let pusher = Pusher::new(&src);
    let layer = random_bytes(100 * 1024);
    let digest = push_layers(&pusher, "team/web", "1", std::slice::from_ref(&layer)).await;
    let puts = "^PUT /v2/m/web/blobs/uploads/";
    // The layer (largest first, one blob at a time): its monolithic PUT is refused, so it
    // goes chunked; the registry commits the closing PUT, whose answer is then lost.
    proxy.fail_with(puts, 405, 1);
    proxy.add_rule(puts, Fault::LoseAnswer, Some(1));
    // One connection to the destination, held by the transfer that checks for the blob.
    let settings = RegistrySettings {
        concurrency: Some(1),
        ..RegistrySettings::default()
    };
    let client = RegistryClient::new(ClientConfig {
        registries: [(dst.clone(), settings)].into(),
        ..mk_client_config(&[&src, &dst])
    })
    .expect("client");
    let engine = MirrorEngine::new(
        client,
        EngineOptions {
            blobs_in_flight: 1,
            ..EngineOptions::default()
        },
        Arc::new(Silent),
    );
    let request = mk_request(
        &mk_repo(&src, "team/web"),
        &digest,
        &mk_repo(&dst, "m/web"),
        &[],
    );
    let copy = engine.copy(&request);
    // Checking for the blob must not wait for the connection the transfer holds.
    let report = tokio::time::timeout(Duration::from_secs(60), copy)
        .await
        .expect("no deadlock on the one connection")
        .expect("the blob was stored: the lost answer does not fail the image");
    assert_eq!(report.blobs_uploaded, 2);
    let statuses: Vec<u16> = proxy.statuses(puts);
    assert_eq!(
        statuses,
        [405, 0, 404, 201],
        "refused, lost, sent again (the session is gone), then the config"
    );
    assert_pullable(&destination.host(), "m/web", &digest).await;
}

#[tokio::test]
async fn an_upload_refused_for_longer_than_allowed_is_not_sent_again() {
    let (_source, _destination, proxy, src, dst) = proxied_destination().await;
    let pusher = Pusher::new(&src);
    let digest = push_layers(&pusher, "team/web", "1", &[random_bytes(1000)]).await;
    let uploads = "^PUT /v2/m/web/blobs/uploads/";
    // An hour is more than the client's 60 s limit: the registry's word is taken, not
    // ignored, and the upload given up on instead of sent again at once.
    proxy.too_many_requests(uploads, "3600", 10);
    let error = copy_one(&src, "team/web", &digest, &dst, "m/web", &[])
        .await
        .expect_err("the registry asks for an hour");
    assert_eq!(error.metric_label(), "too_many_requests", "{error}");
    assert_eq!(
        proxy.count(uploads),
        2,
        "one refused upload per blob (layer and config), none sent again"
    );
}

#[tokio::test]
async fn refused_write_carries_the_registry_message() {
    let (_source, _destination, proxy, src, dst) = proxied_destination().await;
    let image = push_image(&src, "team/web", "1.0", ImageSpec::small("linux/amd64")).await;
    proxy.add_rule(
        "^POST /v2/m/web/blobs/uploads/",
        Fault::Respond {
            status: 403,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: r#"{"errors":[{"code":"DENIED","message":"storage quota exceeded"}]}"#.into(),
        },
        None,
    );
    let error = copy_one(&src, "team/web", &image.digest, &dst, "m/web", &[])
        .await
        .expect_err("the destination refuses uploads");
    assert_eq!(error.metric_label(), "denied");
    assert!(
        error.to_string().contains("DENIED: storage quota exceeded"),
        "{error}"
    );
    assert_eq!(proxy.count("^PUT "), 0, "nothing pushed after the refusal");
}

#[tokio::test]
async fn uploads_to_a_bearer_protected_registry() {
    let (source, destination) = (TestRegistry::start(), TestRegistry::start());
    let proxy = FaultProxy::start(&destination.host()).await;
    proxy.add_rule(
        ".*",
        Fault::RequireBearer {
            token: "push-token".into(),
            expires_in: 300,
        },
        None,
    );
    let (src, dst) = (source.host(), proxy.host());
    let image = push_image(&src, "team/web", "1.0", ImageSpec::small("linux/amd64")).await;
    let report = copy_one(&src, "team/web", &image.digest, &dst, "m/web", &["1.0"])
        .await
        .expect("copy");
    assert_eq!(report.blobs_uploaded, 2);
    let uploads = proxy.requests_matching("^PUT /v2/m/web/blobs/uploads/");
    assert_eq!(uploads.len(), 2, "one streamed PUT per blob, never resent");
    assert!(uploads.iter().all(|s| s.authorized && s.status == 201));
}

#[tokio::test]
async fn an_upload_whose_token_ran_out_while_it_waited_gets_a_new_one_first() {
    let (source, destination) = (TestRegistry::start(), TestRegistry::start());
    let source_proxy = FaultProxy::start(&source.host()).await;
    let proxy = FaultProxy::start(&destination.host()).await;
    // Tokens live 2 s, so the client drops them after 1 s; the source takes 1.5 s to start
    // each blob, between the upload's POST and its PUT.
    proxy.add_rule(
        ".*",
        Fault::RequireBearer {
            token: "push-token".into(),
            expires_in: 2,
        },
        None,
    );
    source_proxy.add_rule(
        "^GET /v2/team/web/blobs/",
        Fault::Delay(Duration::from_millis(1500)),
        None,
    );
    let (src, dst) = (source_proxy.host(), proxy.host());
    let image = push_image(
        &source.host(),
        "team/web",
        "1.0",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let report = copy_one(&src, "team/web", &image.digest, &dst, "m/web", &["1.0"])
        .await
        .expect("copy");
    assert_eq!(report.blobs_uploaded, 2);
    let uploads = proxy.requests_matching("^PUT /v2/m/web/blobs/uploads/");
    assert_eq!(uploads.len(), 2, "one streamed PUT per blob, never refused");
    assert!(uploads.iter().all(|s| s.authorized && s.status == 201));
}
