//! What the daemon serves, end to end: `imagelock::daemon::run` with its webhook over TLS, a
//! real `docker-registry` and a bare `file://` config repo that "someone else" pushes to with
//! the git CLI. The pins come from the manifest, the configuration and the digests of locks
//! the daemon wrote: a hand-edited lock is never served and is healed by the next pass; a
//! lock that disagrees with its manifest is rebuilt; one rule decides what `image: <alias>`
//! means for the webhook and the outputs; a manifest may only declare the namespaces its path
//! may declare.

use std::net::SocketAddr;
use std::time::Duration;

use imagelock::admission::SelfSigned;
use imagelock::daemon::DaemonConfig;
use imagelock::reference::Digest;
use imagelock::tenancy::{NamespacePolicy, Tenancy};
use serde_json::{Value, json};

use crate::admission::{admission_review, patched};
use crate::common::{
    ConfigRepo, ImageSpec, PushedImage, TestRegistry, free_port, git, image_set, push_image,
    repo_config,
};
use crate::daemon::{Daemon, remote_lock, wait_for};

const WEB_MANIFEST: &str = "images/team-a/web.yaml";
const WEB_LOCK: &str = "images/team-a/web.lock.yaml";

/// A daemon with its webhook, and a client that trusts the webhook's generated CA.
struct Served {
    daemon: Daemon,
    client: reqwest::Client,
    url: String,
    _dir: tempfile::TempDir,
}

impl Served {
    async fn start(repo: &ConfigRepo, host: &str, tenancy: Tenancy) -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        let webhook = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let tls = dir.path().join("tls");
        let daemon = Daemon::start_with(
            repo,
            &dir.path().join("checkout"),
            "1s",
            &[host],
            |config: &mut DaemonConfig| {
                config.webhook_listen = Some(webhook);
                config.tls_self_signed = Some(tls.clone());
                config.tenancy = tenancy.clone();
            },
        )
        .await;
        let ca = wait_for("the webhook's CA", || async {
            std::fs::read(tls.join(SelfSigned::CA_CERT)).ok()
        })
        .await;
        let service = "imagelock.imagelock.svc";
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("ca")])
            .resolve(service, webhook)
            .timeout(Duration::from_secs(5))
            .build()
            .expect("client");
        Served {
            daemon,
            client,
            url: format!("https://{service}:{}/mutate", webhook.port()),
            _dir: dir,
        }
    }

    /// What the webhook makes of a Pod of `namespace` running `image`: the image it would run
    /// and whether it is admitted. `None` while the webhook has no pins yet.
    async fn admit(&self, namespace: &str, image: &str) -> Option<(String, bool)> {
        let pod = json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": namespace},
            "spec": {"containers": [{"name": "c", "image": image}]}});
        let review = admission_review("CREATE", namespace, &pod, None);
        let response = self
            .client
            .post(&self.url)
            .json(&review)
            .send()
            .await
            .ok()?;
        if response.status() != 200 {
            return None;
        }
        let answer: Value = response.json().await.ok()?;
        let allowed = answer["response"]["allowed"].as_bool()?;
        let after = patched(&pod, &answer["response"]);
        Some((
            after["spec"]["containers"][0]["image"].as_str()?.to_owned(),
            allowed,
        ))
    }

    /// The image a Pod of `namespace` naming `image` runs, once the webhook has pins.
    async fn image(&self, namespace: &str, image: &str) -> String {
        wait_for("the webhook's answer", || async {
            self.admit(namespace, image).await.map(|(image, _)| image)
        })
        .await
    }
}

fn web_entry(host: &str, tags: &str) -> String {
    format!("    - name: web\n      source: {host}/team-a/web\n      tags: [{tags}]\n")
}

/// A config repo whose team-a ImageSet follows `latest` of `<host>/team-a/web`.
fn web_repo(host: &str) -> ConfigRepo {
    ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        (
            WEB_MANIFEST,
            image_set("team-a", "web", &web_entry(host, "latest")),
        ),
    ])
}

async fn push_web(host: &str, tag: &str) -> PushedImage {
    push_image(host, "team-a/web", tag, ImageSpec::small("linux/amd64")).await
}

/// A lock changed by someone else (`mirror:` on another host, another digest) is never what
/// the webhook serves, in its namespace or any other, and the next pass commits the lock the
/// daemon verified back, with the real digest and its generations as they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hand_edited_lock_is_never_served_and_the_next_pass_heals_it() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let old = push_web(&host, "old").await;
    let web = push_web(&host, "latest").await;
    let repo = web_repo(&host);
    let served = Served::start(&repo, &host, Tenancy::default()).await;
    served.daemon.wait_committed().await;
    let verified = repo.show(WEB_LOCK).expect("the daemon's lock");
    let real = format!("{host}/team-a/web@{}", web.digest);
    assert_eq!(served.image("team-a", "web").await, real);
    let source_tag = format!("{host}/team-a/web:latest");
    assert_eq!(served.image("team-a", &source_tag).await, real);
    // team-a's pin is team-a's: a Pod of team-b naming the same source and tag keeps it.
    assert_eq!(served.image("team-b", &source_tag).await, source_tag);

    // Someone else commits a lock that sends Pods to another host and another digest.
    let forged = Digest::sha256_of(b"not what the registry has");
    let mut edited = remote_lock(&repo, WEB_LOCK).expect("lock");
    let image = edited.images.get_mut("web").expect("web");
    image.mirror = Some("evil.example:5000/team-a/web".into());
    image.tags.get_mut("latest").expect("latest").digest = forged.clone();
    let probes = [
        ("team-a", "web"),
        ("team-a", source_tag.as_str()),
        ("team-b", source_tag.as_str()),
    ];
    edit_until_healed(
        &served,
        &repo,
        &edited,
        &verified,
        &["evil.example", forged.as_str()],
        &probes,
    )
    .await;

    // A quieter edit that agrees with the manifest: only the digest, of an older image that
    // does exist in the source repository (a rollback nobody reviewed).
    let mut edited = remote_lock(&repo, WEB_LOCK).expect("lock");
    let rollback = &mut edited.images.get_mut("web").expect("web").tags;
    rollback.get_mut("latest").expect("latest").digest = old.digest.clone();
    edit_until_healed(
        &served,
        &repo,
        &edited,
        &verified,
        &[old.digest.as_str()],
        &probes,
    )
    .await;

    // The healing commits are the daemon's: the lock is byte for byte the one it verified
    // (generation 1, no history: nothing was based on a forged digest).
    let healed = remote_lock(&repo, WEB_LOCK).expect("lock");
    let latest = &healed.images["web"].tags["latest"];
    assert_eq!(
        (latest.digest.clone(), latest.generation),
        (web.digest.clone(), 1)
    );
    assert!(latest.history.is_empty(), "{healed:#?}");
    assert_eq!(healed.images["web"].mirror, None);
    assert_eq!(served.image("team-a", "web").await, real);
    let status = served.daemon.status().await.expect("/status");
    assert_eq!(
        status["images"][0]["tags"]["latest"]["digest"],
        web.digest.as_str(),
        "{status:#}"
    );
    served.daemon.stop().await;
}

/// Pushes `edited` as the lock (another writer), then asks the webhook about `probes`
/// (namespace, image) until the daemon's next commit has put `verified` back: no answer may
/// contain any of `forbidden`.
async fn edit_until_healed(
    served: &Served,
    repo: &ConfigRepo,
    edited: &imagelock::lock::LockFile,
    verified: &str,
    forbidden: &[&str],
    probes: &[(&str, &str)],
) {
    repo.push_change(
        WEB_LOCK,
        &imagelock::lock::render(edited),
        "chore: faster images",
    );
    let edit_count = repo.commit_count();
    let mut answers = 0;
    loop {
        for (namespace, image) in probes {
            if let Some((after, _)) = served.admit(namespace, image).await {
                answers += 1;
                for bad in forbidden {
                    assert!(
                        !after.contains(bad),
                        "served the hand-edited lock to {namespace}: {after}"
                    );
                }
            }
        }
        if repo.commit_count() > edit_count && repo.show(WEB_LOCK).as_deref() == Some(verified) {
            break;
        }
        assert!(
            answers < 3 * 600,
            "the lock was not healed: {:?}",
            repo.subjects()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(answers > 0);
    assert_eq!(repo.commit_count(), edit_count + 1, "{:?}", repo.subjects());
    let message = git(&repo.bare, &["log", "-1", "--format=%B", "main"]);
    assert!(
        message.contains(&format!(
            "{WEB_LOCK}: restored as imagelock last wrote it (another commit changed it)"
        )),
        "{message}"
    );
}

/// A manifest whose source changed: its old lock entry (another source) is never served,
/// neither for the new source nor from the lock's own, and the next commit rebuilds the entry
/// from the manifest; also when the daemon starts on such a checkout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_of_another_source_is_not_served_and_is_regenerated() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let old = push_web(&host, "latest").await;
    let new = push_image(
        &host,
        "team-a/web2",
        "latest",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let repo = web_repo(&host);
    let served = Served::start(&repo, &host, Tenancy::default()).await;
    served.daemon.wait_committed().await;
    assert_eq!(
        served.image("team-a", "web").await,
        format!("{host}/team-a/web@{}", old.digest)
    );

    let moved =
        format!("    - name: web\n      source: {host}/team-a/web2\n      tags: [latest]\n");
    repo.push_change(
        WEB_MANIFEST,
        &image_set("team-a", "web", &moved),
        "web moves to web2",
    );
    let mixed = format!("{host}/team-a/web2@{}", old.digest);
    let want = format!("{host}/team-a/web2@{}", new.digest);
    wait_for("the webhook to serve web2's own digest", || async {
        let (after, _) = served.admit("team-a", "web").await?;
        assert_ne!(
            after, mixed,
            "the old source's digest served for the new source"
        );
        (after == want).then_some(())
    })
    .await;
    let lock = remote_lock(&repo, WEB_LOCK).expect("lock");
    let web = &lock.images["web"];
    assert_eq!(web.source, format!("{host}/team-a/web2"));
    assert_eq!(web.tags["latest"].digest, new.digest);
    assert_eq!(web.tags["latest"].generation, 1, "{lock:#?}");
    served.daemon.stop().await;

    // The manifest moves back while no daemon runs: a fresh start finds a lock of web2 beside
    // a manifest of web. It trusts the checkout, but the lock's entry disagrees with the
    // manifest: `web` is never served from web2, and the first pass rebuilds the entry.
    repo.push_change(
        WEB_MANIFEST,
        &image_set("team-a", "web", &web_entry(&host, "latest")),
        "web moves back",
    );
    let served = Served::start(&repo, &host, Tenancy::default()).await;
    let want = format!("{host}/team-a/web@{}", old.digest);
    let answers = std::sync::atomic::AtomicUsize::new(0);
    wait_for("the webhook to serve web's digest again", || async {
        let (after, _) = served.admit("team-a", "web").await?;
        answers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        assert!(
            !after.contains("/team-a/web2"),
            "the lock's source served for the manifest's: {after}"
        );
        assert!(
            !after.contains(new.digest.as_str()),
            "web2's digest served for web: {after}"
        );
        (after == want).then_some(())
    })
    .await;
    assert!(answers.into_inner() > 0);
    let lock = remote_lock(&repo, WEB_LOCK).expect("lock");
    assert_eq!(lock.images["web"].source, format!("{host}/team-a/web"));
    served.daemon.stop().await;
}

/// `tags: [stable, latest]`: `image: web` means `latest` for the webhook, and so do the
/// kustomize Component's alias entry and the Helm values (kustomize used to take `stable`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_alias_means_the_same_tag_for_the_webhook_and_the_outputs() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let stable = push_web(&host, "stable").await;
    let latest = push_web(&host, "latest").await;
    assert_ne!(stable.digest, latest.digest);
    let config = format!(
        "{}outputs:\n  kustomize: {{path: outputs/kustomize}}\n  helmValues: {{path: outputs/helm}}\n",
        repo_config()
    );
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", config),
        (
            WEB_MANIFEST,
            image_set("team-a", "web", &web_entry(&host, "stable, latest")),
        ),
    ]);
    let served = Served::start(&repo, &host, Tenancy::default()).await;
    served.daemon.wait_committed().await;
    let repository = format!("{host}/team-a/web");
    assert_eq!(
        served.image("team-a", "web").await,
        format!("{repository}@{}", latest.digest)
    );

    let component = repo
        .show("outputs/kustomize/team-a/kustomization.yaml")
        .expect("the Component");
    let component: Value = serde_saphyr::from_str(&component).expect("YAML");
    let alias = component["images"]
        .as_array()
        .and_then(|images| images.iter().find(|i| i["name"] == "web"))
        .unwrap_or_else(|| panic!("no alias entry: {component:#}"));
    assert_eq!(alias["newName"], repository.as_str());
    assert_eq!(alias["digest"], latest.digest.as_str(), "{component:#}");

    let values = repo.show("outputs/helm/team-a/web.yaml").expect("values");
    let values: Value = serde_saphyr::from_str(&values).expect("YAML");
    assert_eq!(values["web"]["image"]["tag"], "latest", "{values:#}");
    assert_eq!(values["web"]["image"]["digest"], latest.digest.as_str());
    served.daemon.stop().await;
}

fn team_paths() -> Tenancy {
    let policy = |glob: &str| NamespacePolicy {
        paths: vec![glob.into()],
        ..NamespacePolicy::default()
    };
    Tenancy {
        namespaces: [
            ("team-a".to_owned(), policy("images/team-a/**")),
            ("team-b".to_owned(), policy("images/team-b/**")),
            ("team-evil".to_owned(), policy("images/team-evil/**")),
        ]
        .into(),
        shared_sets: Vec::new(),
    }
}

/// A manifest under `images/team-evil/` that declares team-b (its path may not): a
/// diagnostic in `/status` naming the file and the operator setting, no lock written, and
/// no pin served, for its alias in team-b or its source anywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_manifest_declaring_a_namespace_its_path_may_not_serves_nothing() {
    let registry = TestRegistry::start();
    let host = registry.host();
    let web = push_web(&host, "latest").await;
    let evil_image = push_image(&host, "evil/web", "latest", ImageSpec::small("linux/amd64")).await;
    let evil = format!("    - name: web\n      source: {host}/evil/web\n      tags: [latest]\n");
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        (
            WEB_MANIFEST,
            image_set("team-a", "web", &web_entry(&host, "latest")),
        ),
        (
            "images/team-evil/web.yaml",
            image_set("team-b", "web", &evil),
        ),
    ]);
    let served = Served::start(&repo, &host, team_paths()).await;
    let status = served.daemon.wait_committed().await;

    let errors: Vec<&str> = status["manifestErrors"]
        .as_array()
        .expect("manifestErrors")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(errors.len(), 1, "{status:#}");
    assert!(
        errors[0].starts_with("images/team-evil/web.yaml:1:1: metadata.namespace: "),
        "{errors:?}"
    );
    assert!(
        errors[0].contains("tenancy.namespaces.team-b.paths"),
        "{errors:?}"
    );
    let images = status["images"].as_array().expect("images");
    assert!(
        images.iter().all(|i| i["manifest"] == WEB_MANIFEST),
        "{status:#}"
    );
    assert!(repo.show("images/team-evil/web.lock.yaml").is_none());
    assert!(repo.show(WEB_LOCK).is_some());

    // team-a is served; team-b gets nothing from the refused manifest.
    assert_eq!(
        served.image("team-a", "web").await,
        format!("{host}/team-a/web@{}", web.digest)
    );
    assert_eq!(served.image("team-b", "web").await, "web");
    let evil_source = format!("{host}/evil/web:latest");
    for namespace in ["team-a", "team-b", "team-evil"] {
        let after = served.image(namespace, &evil_source).await;
        assert_eq!(after, evil_source, "{namespace}");
        assert!(!after.contains(evil_image.digest.as_str()));
    }
    served.daemon.stop().await;
}
