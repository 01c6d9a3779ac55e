//! The admission webhook over real TLS: Pods made by kubectl, per namespace mode; pins swapped
//! under load; certificate rotation by the kubelet's `..data` symlink swap; bad requests and
//! slow clients.
//!
//! Pins come from a config repo checkout on disk (manifests and lock files), loaded with
//! `PinIndex::load`, the same build the daemon runs after each pass.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use imagelock::admission::tls::{provider, server_config};
use imagelock::admission::{
    CertReloader, IndexHandle, PinIndex, REWRITTEN_ANNOTATION, SelfSigned, ServerOptions, TlsFiles,
};
use imagelock::lock::{self, LockFile, LockedImage, LockedTag};
use imagelock::reference::Digest;
use rustls::pki_types::pem::PemObject as _;
use serde_json::{Value, json};
use sha2::Digest as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::common::{
    ConfigRepo, ImageSpec, TestRegistry, free_port, image_set, push_image, repo_config, write,
};

const SERVICE: &str = "imagelock";
const NAMESPACE: &str = "imagelock-system";
/// Upper bound of every wait; only a hang reaches it.
const WAIT: Duration = Duration::from_secs(15);

// ---- fixtures ------------------------------------------------------------------------

/// The namespaces of the test repo and their modes.
const REWRITE: &str = "team-a";
const ENFORCE: &str = "team-b";
const AUDIT: &str = "team-c";
const OFF: &str = "team-d";

fn digest(namespace: &str, alias: &str, tag: &str, version: u32) -> Digest {
    Digest::sha256_of(format!("{namespace}/{alias}:{tag} v{version}").as_bytes())
}

fn web_pin(namespace: &str, tag: &str, version: u32) -> String {
    format!(
        "registry.internal/{namespace}/web@{}",
        digest(namespace, "web", tag, version)
    )
}

fn nginx_pin(namespace: &str, version: u32) -> String {
    format!(
        "docker.io/library/nginx@{}",
        digest(namespace, "nginx", "1.25", version)
    )
}

fn locked_tag(digest: Digest) -> LockedTag {
    LockedTag {
        digest,
        media_type: "application/vnd.oci.image.index.v1+json".into(),
        platforms: Default::default(),
        generation: 1,
        resolved_at: "2026-11-20T10:00:00Z".into(),
        pinned: false,
        history: Vec::new(),
    }
}

/// A config repo checkout: the four namespaces, each with an ImageSet pinning
/// `web` (quay.io/company/web: latest and 1.4, mirrored) and `nginx` (Docker Hub, 1.25);
/// `version` changes every digest.
fn write_checkout(root: &Path, version: u32) {
    write(
        root,
        "imagelock.yaml",
        &format!(
            "apiVersion: imagelock.dev/v1alpha1\nkind: Config\nmirror: {{registry: registry.internal}}\nadmission:\n  default: rewrite\n  namespaces:\n    {ENFORCE}: enforce\n    {AUDIT}: audit\n    {OFF}: \"off\"\n"
        ),
    );
    for namespace in [REWRITE, ENFORCE, AUDIT, OFF] {
        write(
            root,
            &format!("images/{namespace}/apps.yaml"),
            &image_set(
                namespace,
                "apps",
                "    - {name: web, source: quay.io/company/web, tags: [latest, \"1.4\"], mirror: true}\n    - {name: nginx, source: docker.io/library/nginx, tags: [\"1.25\"], mirror: false}\n",
            ),
        );
        let lock = LockFile {
            source: "apps.yaml".into(),
            images: [
                (
                    "web".to_owned(),
                    LockedImage {
                        source: "quay.io/company/web".into(),
                        mirror: Some(format!("registry.internal/{namespace}/web")),
                        tags: ["latest", "1.4"]
                            .into_iter()
                            .map(|tag| {
                                (
                                    tag.to_owned(),
                                    locked_tag(digest(namespace, "web", tag, version)),
                                )
                            })
                            .collect(),
                    },
                ),
                (
                    "nginx".to_owned(),
                    LockedImage {
                        source: "docker.io/library/nginx".into(),
                        mirror: None,
                        tags: [(
                            "1.25".to_owned(),
                            locked_tag(digest(namespace, "nginx", "1.25", version)),
                        )]
                        .into(),
                    },
                ),
            ]
            .into(),
        };
        write(
            root,
            &format!("images/{namespace}/apps.lock.yaml"),
            &lock::render(&lock),
        );
    }
}

fn load_pins(version: u32) -> PinIndex {
    let dir = tempfile::tempdir().expect("tempdir");
    write_checkout(dir.path(), version);
    let (index, problems) = PinIndex::load(dir.path()).expect("load pins");
    assert!(problems.is_empty(), "{problems:?}");
    index
}

/// A webhook server on a free port of 127.0.0.1 with its own CA, stopped on drop.
struct Webhook {
    addr: SocketAddr,
    index: IndexHandle,
    certs: Arc<CertReloader>,
    ca: Vec<u8>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn test_options() -> ServerOptions {
    ServerOptions {
        handshake_timeout: Duration::from_secs(1),
        header_timeout: Duration::from_secs(1),
        body_timeout: Duration::from_secs(1),
        ..ServerOptions::default()
    }
}

impl Webhook {
    async fn start(index: Option<PinIndex>) -> Webhook {
        Webhook::start_with_options(index, test_options()).await
    }

    /// [`Webhook::start`] with the server's limits given.
    async fn start_with_options(index: Option<PinIndex>, options: ServerOptions) -> Webhook {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = generate(dir.path());
        let ca = std::fs::read(dir.path().join(SelfSigned::CA_CERT)).expect("ca.crt");
        Webhook::start_with(files, ca, index, Duration::from_secs(3600), dir, options).await
    }

    async fn start_with(
        files: TlsFiles,
        ca: Vec<u8>,
        index: Option<PinIndex>,
        poll: Duration,
        dir: tempfile::TempDir,
        options: ServerOptions,
    ) -> Webhook {
        let certs = CertReloader::load(files, provider()).expect("load certificate");
        let tls = Arc::new(server_config(certs.clone(), provider()).expect("tls config"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let handle = match index {
            Some(index) => IndexHandle::with(index),
            None => IndexHandle::new(),
        };
        let shutdown = CancellationToken::new();
        let task = tokio::spawn({
            let serve = imagelock::admission::serve(
                listener,
                tls,
                handle.clone(),
                options,
                shutdown.clone(),
            );
            let watch = certs.clone().watch(poll, shutdown.clone());
            async move {
                tokio::join!(serve, watch);
            }
        });
        Webhook {
            addr,
            index: handle,
            certs,
            ca,
            shutdown,
            task: Some(task),
            _dir: dir,
        }
    }

    fn client(&self) -> reqwest::Client {
        let ca = reqwest::Certificate::from_pem(&self.ca).expect("ca pem");
        reqwest::Client::builder()
            .tls_certs_only([ca])
            .resolve(&format!("{SERVICE}.{NAMESPACE}.svc"), self.addr)
            .timeout(WAIT)
            .build()
            .expect("client")
    }

    fn url(&self, path: &str) -> String {
        format!(
            "https://{SERVICE}.{NAMESPACE}.svc:{}{path}",
            self.addr.port()
        )
    }

    async fn post(&self, client: &reqwest::Client, body: Vec<u8>) -> (u16, Vec<u8>) {
        let response = client
            .post(self.url("/mutate"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send");
        let status = response.status().as_u16();
        (status, response.bytes().await.expect("body").to_vec())
    }

    /// A new TLS connection to the server, handshake done, nothing sent.
    async fn tls_connect(&self) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        self.tls_connect_from([127, 0, 0, 1].into()).await
    }

    /// [`Webhook::tls_connect`] from the loopback address `from` (another peer).
    async fn tls_connect_from(
        &self,
        from: std::net::IpAddr,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&self.ca) {
            roots.add(cert.expect("pem")).expect("root");
        }
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.bind(SocketAddr::new(from, 0)).expect("bind");
        let tcp = socket.connect(self.addr).await.expect("connect");
        let name = rustls::pki_types::ServerName::try_from(format!("{SERVICE}.{NAMESPACE}.svc"))
            .expect("name");
        connector.connect(name, tcp).await.expect("handshake")
    }

    /// Sends `review` and returns the response part of the answer.
    async fn review(&self, client: &reqwest::Client, review: &Value) -> Value {
        let (status, body) = self.post(client, review.to_string().into_bytes()).await;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let answer: Value = serde_json::from_slice(&body).expect("json answer");
        assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(answer["kind"], "AdmissionReview");
        assert_eq!(answer["response"]["uid"], review["request"]["uid"]);
        answer["response"].clone()
    }

    /// Stops the server and waits until it has.
    async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server stops")
                .expect("server task");
        }
    }
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn generate(dir: &Path) -> TlsFiles {
    SelfSigned {
        dir: dir.to_path_buf(),
        service: SERVICE.into(),
        namespace: NAMESPACE.into(),
    }
    .ensure()
    .expect("generate certificates")
}

static UID: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn admission_review(
    operation: &str,
    namespace: &str,
    pod: &Value,
    old: Option<&Value>,
) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": format!("uid-{}", UID.fetch_add(1, Ordering::Relaxed)),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod["metadata"]["name"].as_str().unwrap_or(""),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters", "system:authenticated"]},
            "object": pod,
            "oldObject": old,
            "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        }
    })
}

/// The Pod with the answer's JSONPatch applied (unchanged when there is none).
pub(crate) fn patched(pod: &Value, response: &Value) -> Value {
    let mut pod = pod.clone();
    if let Some(patch) = response.get("patch") {
        assert_eq!(response["patchType"], "JSONPatch");
        // The API requires base64 for `patch`, as for every `[]byte` in JSON.
        let b64 = patch.as_str().expect("the patch is a base64 string");
        let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64)
            .expect("base64 patch");
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("JSONPatch");
        json_patch::patch(&mut pod, &patch).expect("patch applies");
    }
    pod
}

fn warnings(response: &Value) -> Vec<String> {
    response["warnings"]
        .as_array()
        .map(|w| {
            w.iter()
                .map(|s| s.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

// ---- kubectl -------------------------------------------------------------------------

/// Just enough API discovery for `kubectl run --dry-run=client`, which asks the server what
/// a Pod is even when it sends nothing.
async fn fake_discovery() -> (SocketAddr, CancellationToken) {
    use axum::Json;
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/api",
            get(|| async { Json(json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]})) }),
        )
        .route(
            "/apis",
            get(|| async { Json(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []})) }),
        )
        .route(
            "/api/v1",
            get(|| async {
                Json(json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
                    {"name": "pods", "singularName": "pod", "namespaced": true, "kind": "Pod", "verbs": ["create", "get", "list"], "shortNames": ["po"]}
                ]}))
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        }
    });
    (addr, stop)
}

async fn kubectl(args: &[&str], server: SocketAddr, home: &Path) -> Value {
    let output = tokio::process::Command::new("kubectl")
        .args(args)
        .args(["--dry-run=client", "-o", "json"])
        .arg(format!("--server=http://{server}"))
        .arg(format!("--cache-dir={}", home.join("cache").display()))
        .env("KUBECONFIG", home.join("no-kubeconfig"))
        .env("HOME", home)
        .output()
        .await
        .expect("run kubectl (is it installed?)");
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("kubectl json")
}

/// `kubectl ARGS --local -f <pod>`: what kubectl makes of `pod` without a server, e.g.
/// `set image` for the object of a Pod UPDATE.
async fn kubectl_local(args: &[&str], pod: &Value) -> Value {
    let home = tempfile::tempdir().expect("tempdir");
    let file = home.path().join("pod.json");
    std::fs::write(&file, pod.to_string()).expect("write pod");
    let output = tokio::process::Command::new("kubectl")
        .args(args)
        .args(["--local", "--dry-run=client", "-o", "json", "-f"])
        .arg(&file)
        .env("KUBECONFIG", home.path().join("no-kubeconfig"))
        .env("HOME", home.path())
        .output()
        .await
        .expect("run kubectl (is it installed?)");
    assert!(
        output.status.success(),
        "kubectl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("kubectl json")
}

/// The Pod a controller would create from a pod template.
fn pod_from_template(template: &Value, name: &str) -> Value {
    let mut metadata = template["metadata"].clone();
    metadata["generateName"] = json!(format!("{name}-"));
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"]})
}

/// Pods from `kubectl run` and the templates of `kubectl create deployment/job/cronjob`.
async fn kubectl_pods() -> Vec<(&'static str, Value)> {
    let home = tempfile::tempdir().expect("tempdir");
    let (server, stop) = fake_discovery().await;
    let run = kubectl(&["run", "web", "--image=web"], server, home.path()).await;
    let deployment = kubectl(
        &[
            "create",
            "deployment",
            "shop",
            "--image=quay.io/company/web:latest",
            "--image=nginx:1.25",
            "--image=busybox",
        ],
        server,
        home.path(),
    )
    .await;
    let job = kubectl(
        &["create", "job", "migrate", "--image=web:1.4"],
        server,
        home.path(),
    )
    .await;
    let cronjob = kubectl(
        &[
            "create",
            "cronjob",
            "report",
            "--image=docker.io/library/nginx:1.25",
            "--schedule=*/5 * * * *",
        ],
        server,
        home.path(),
    )
    .await;
    stop.cancel();
    assert_eq!(run["kind"], "Pod");
    vec![
        ("run", run),
        (
            "deployment",
            pod_from_template(&deployment["spec"]["template"], "shop"),
        ),
        (
            "job",
            pod_from_template(&job["spec"]["template"], "migrate"),
        ),
        (
            "cronjob",
            pod_from_template(
                &cronjob["spec"]["jobTemplate"]["spec"]["template"],
                "report",
            ),
        ),
    ]
}

/// What rewrite mode makes of each kubectl Pod's images (container name, before, after).
fn expected_rewrites(case: &str, namespace: &str) -> Vec<(&'static str, &'static str, String)> {
    match case {
        "run" => vec![("web", "web", web_pin(namespace, "latest", 1))],
        "deployment" => vec![
            (
                "web",
                "quay.io/company/web:latest",
                web_pin(namespace, "latest", 1),
            ),
            ("nginx", "nginx:1.25", nginx_pin(namespace, 1)),
        ],
        "job" => vec![("migrate", "web:1.4", web_pin(namespace, "1.4", 1))],
        "cronjob" => vec![(
            "report",
            "docker.io/library/nginx:1.25",
            nginx_pin(namespace, 1),
        )],
        _ => unreachable!(),
    }
}

fn with_namespace(pod: &Value, namespace: &str) -> Value {
    let mut pod = pod.clone();
    pod["metadata"]["namespace"] = json!(namespace);
    pod
}

/// The Pod as rewrite mode should leave it: images replaced, the annotation added.
fn expected_pod(pod: &Value, rewrites: &[(&str, &str, String)]) -> Value {
    let mut expected = pod.clone();
    let mut record = serde_json::Map::new();
    for (name, before, after) in rewrites {
        let container = expected["spec"]["containers"]
            .as_array_mut()
            .and_then(|cs| cs.iter_mut().find(|c| c["name"] == *name))
            .expect("container");
        container["image"] = json!(after);
        record.insert((*name).to_owned(), json!(format!("{before} -> {after}")));
    }
    if !rewrites.is_empty() {
        expected["metadata"]["annotations"] = json!({
            REWRITTEN_ANNOTATION: Value::Object(record).to_string()
        });
    }
    expected
}

// ---- tests ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_pods_per_mode() {
    let webhook = Webhook::start(Some(load_pins(1))).await;
    let client = webhook.client();
    for (case, pod) in kubectl_pods().await {
        // rewrite: the pinned images become digests, the rest stays, the Pod records it.
        let pod_a = with_namespace(&pod, REWRITE);
        let response = webhook
            .review(&client, &admission_review("CREATE", REWRITE, &pod_a, None))
            .await;
        assert_eq!(response["allowed"], true, "{case}: {response}");
        assert!(warnings(&response).is_empty(), "{case}: {response}");
        let rewrites = expected_rewrites(case, REWRITE);
        assert_eq!(
            patched(&pod_a, &response),
            expected_pod(&pod_a, &rewrites),
            "{case}"
        );

        // enforce: the same, unless an image is not pinned; then denied, naming it.
        let pod_b = with_namespace(&pod, ENFORCE);
        let response = webhook
            .review(&client, &admission_review("CREATE", ENFORCE, &pod_b, None))
            .await;
        if case == "deployment" {
            assert_eq!(response["allowed"], false, "{response}");
            assert_eq!(response["status"]["code"], 403);
            let message = response["status"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("container \"busybox\" image \"busybox\" is not pinned by a lock"),
                "{message}"
            );
            assert!(!message.contains("\"web\""), "{message}");
            assert!(response.get("patch").is_none());
        } else {
            assert_eq!(response["allowed"], true, "{case}: {response}");
            assert_eq!(
                patched(&pod_b, &response),
                expected_pod(&pod_b, &expected_rewrites(case, ENFORCE)),
                "{case}"
            );
        }

        // audit: no change, a warning per image that enforce would rewrite or refuse.
        let pod_c = with_namespace(&pod, AUDIT);
        let response = webhook
            .review(&client, &admission_review("CREATE", AUDIT, &pod_c, None))
            .await;
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none(), "{case}: {response}");
        let warned = warnings(&response);
        let rewrites = expected_rewrites(case, AUDIT);
        for (name, before, after) in &rewrites {
            let expected = format!(
                "imagelock audit: container {name:?} image {before:?} would be rewritten to {after:?}"
            );
            assert!(warned.contains(&expected), "{case}: {warned:?}");
        }
        if case == "deployment" {
            assert!(
                warned.contains(&"imagelock audit: container \"busybox\" image \"busybox\" is not pinned by a lock; enforce mode would deny this Pod".to_owned()),
                "{warned:?}"
            );
        }
        assert_eq!(
            warned.len(),
            rewrites.len() + usize::from(case == "deployment")
        );

        // off: nothing at all.
        let pod_d = with_namespace(&pod, OFF);
        let response = webhook
            .review(&client, &admission_review("CREATE", OFF, &pod_d, None))
            .await;
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none() && response.get("warnings").is_none());
    }
    webhook.stop().await;
}

/// `kubectl set image pod/...` on a running Pod: the UPDATE is judged as a CREATE would be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_updates_that_change_an_image() {
    let webhook = Webhook::start(Some(load_pins(1))).await;
    let client = webhook.client();
    let (_, pod) = kubectl_pods()
        .await
        .into_iter()
        .find(|(case, _)| *case == "run")
        .expect("run pod");
    for namespace in [REWRITE, ENFORCE] {
        // The Pod as stored: created through the webhook.
        let created = with_namespace(&pod, namespace);
        let response = webhook
            .review(
                &client,
                &admission_review("CREATE", namespace, &created, None),
            )
            .await;
        let running = patched(&created, &response);
        assert_eq!(
            running["spec"]["containers"][0]["image"],
            web_pin(namespace, "latest", 1)
        );

        // A pinned image: rewritten in both modes, and recorded.
        let new = kubectl_local(&["set", "image", "web=nginx:1.25"], &running).await;
        let response = webhook
            .review(
                &client,
                &admission_review("UPDATE", namespace, &new, Some(&running)),
            )
            .await;
        assert_eq!(response["allowed"], true, "{namespace}: {response}");
        let after = patched(&new, &response);
        assert_eq!(
            after["spec"]["containers"][0]["image"],
            nginx_pin(namespace, 1)
        );
        let record: Value = serde_json::from_str(
            after["metadata"]["annotations"][REWRITTEN_ANNOTATION]
                .as_str()
                .expect("annotation"),
        )
        .expect("annotation json");
        assert_eq!(
            record["web"],
            format!("nginx:1.25 -> {}", nginx_pin(namespace, 1))
        );

        // An unpinned image: rewrite mode leaves it, enforce mode denies the update.
        let new = kubectl_local(&["set", "image", "web=busybox:1.36"], &running).await;
        let response = webhook
            .review(
                &client,
                &admission_review("UPDATE", namespace, &new, Some(&running)),
            )
            .await;
        if namespace == ENFORCE {
            assert_eq!(response["allowed"], false, "{response}");
            assert_eq!(response["status"]["code"], 403);
            let message = response["status"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains("container \"web\" image \"busybox:1.36\" is not pinned"),
                "{message}"
            );
        } else {
            assert_eq!(response["allowed"], true);
            assert!(response.get("patch").is_none(), "{response}");
        }

        // An update that changes no image passes untouched.
        let relabelled = kubectl_local(&["label", "tier=web"], &running).await;
        assert_eq!(relabelled["metadata"]["labels"]["tier"], "web");
        let response = webhook
            .review(
                &client,
                &admission_review("UPDATE", namespace, &relabelled, Some(&running)),
            )
            .await;
        assert_eq!(response["allowed"], true);
        assert!(response.get("patch").is_none() && response.get("warnings").is_none());
    }

    // enforce: an unpinned debug container through the ephemeralcontainers subresource.
    let running = with_namespace(&pod, ENFORCE);
    let mut debugged = running.clone();
    debugged["spec"]["ephemeralContainers"] =
        json!([{"name": "debugger", "image": "busybox", "targetContainerName": "web"}]);
    let mut review = admission_review("UPDATE", ENFORCE, &debugged, Some(&running));
    review["request"]["subResource"] = json!("ephemeralcontainers");
    let response = webhook.review(&client, &review).await;
    assert_eq!(response["allowed"], false, "{response}");
    webhook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_containers_added_by_update() {
    let webhook = Webhook::start(Some(load_pins(1))).await;
    let client = webhook.client();
    let (_, pod) = kubectl_pods()
        .await
        .into_iter()
        .find(|(case, _)| *case == "run")
        .expect("run pod");
    let old = with_namespace(&pod, REWRITE);
    let mut new = old.clone();
    new["spec"]["ephemeralContainers"] =
        json!([{"name": "debugger", "image": "nginx:1.25", "targetContainerName": "web"}]);
    let mut review = admission_review("UPDATE", REWRITE, &new, Some(&old));
    review["request"]["subResource"] = json!("ephemeralcontainers");
    let response = webhook.review(&client, &review).await;
    assert_eq!(response["allowed"], true);
    let after = patched(&new, &response);
    assert_eq!(
        after["spec"]["ephemeralContainers"][0]["image"],
        nginx_pin(REWRITE, 1)
    );
    // Existing containers are not touched on UPDATE.
    assert_eq!(after["spec"]["containers"][0]["image"], "web");
    webhook.stop().await;
}

/// Every answer of a burst during which the pins are swapped comes from one version: the
/// three images of a Pod are all rewritten to version 1 digests or all to version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_swapped_during_a_burst() {
    let webhook = Arc::new(Webhook::start(Some(load_pins(1))).await);
    let v2 = load_pins(2);
    let client = webhook.client();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": REWRITE},
        "spec": {"containers": [
            {"name": "a", "image": "web"},
            {"name": "b", "image": "web:1.4"},
            {"name": "c", "image": "nginx:1.25"},
        ]},
    });
    let version_of = |images: [&str; 3]| -> Option<u32> {
        (1..=2).find(|&v| {
            images
                == [
                    web_pin(REWRITE, "latest", v).as_str(),
                    web_pin(REWRITE, "1.4", v).as_str(),
                    nginx_pin(REWRITE, v).as_str(),
                ]
        })
    };
    const REQUESTS: usize = 400;
    const CONCURRENCY: usize = 32;
    let answered = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..CONCURRENCY {
        let (webhook, client, pod) = (webhook.clone(), client.clone(), pod.clone());
        let (answered, next) = (answered.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < REQUESTS {
                let review = admission_review("CREATE", REWRITE, &pod, None);
                let response = webhook.review(&client, &review).await;
                let after = patched(&pod, &response);
                let images: Vec<&str> = after["spec"]["containers"]
                    .as_array()
                    .expect("containers")
                    .iter()
                    .map(|c| c["image"].as_str().unwrap_or_default())
                    .collect();
                versions.push(version_of([images[0], images[1], images[2]]));
                answered.fetch_add(1, Ordering::Relaxed);
            }
            versions
        }));
    }
    // Swap once a quarter of the burst is answered, while the rest is in flight.
    let deadline = tokio::time::Instant::now() + WAIT;
    while answered.load(Ordering::Relaxed) < REQUESTS / 4 {
        assert!(tokio::time::Instant::now() < deadline, "burst stalled");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    webhook.index.store(v2);
    let mut seen = [0usize; 3];
    for worker in workers {
        for version in worker.await.expect("worker") {
            match version {
                Some(v) => seen[v as usize] += 1,
                None => seen[0] += 1,
            }
        }
    }
    assert_eq!(seen[0], 0, "answers mixing versions: {seen:?}");
    assert_eq!(seen[1] + seen[2], REQUESTS);
    assert!(seen[1] > 0 && seen[2] > 0, "{seen:?}");
    match Arc::try_unwrap(webhook) {
        Ok(webhook) => webhook.stop().await,
        Err(_) => panic!("webhook still shared"),
    }
}

/// The SHA-256 of the certificate a new TLS connection to the server presents.
async fn peer_fingerprint(addr: SocketAddr, roots: &[&[u8]]) -> Vec<u8> {
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem) {
            store.add(cert.expect("pem")).expect("root");
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(store)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(format!("{SERVICE}.{NAMESPACE}.svc"))
        .expect("server name");
    let tls = connector.connect(name, tcp).await.expect("handshake");
    let cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .expect("peer certificate")[0]
        .clone();
    sha2::Sha256::digest(cert.as_ref()).to_vec()
}

fn pem_fingerprint(path: &Path) -> Vec<u8> {
    let pem = std::fs::read(path).expect("read pem");
    let cert = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .next()
        .expect("a certificate")
        .expect("pem");
    sha2::Sha256::digest(cert.as_ref()).to_vec()
}

/// The kubelet's Secret volume: `tls.crt -> ..data/tls.crt`, `..data -> ..data_<version>`;
/// an update swaps `..data` with one rename. New connections get the new certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_rotation_by_data_symlink_swap() {
    let dir = tempfile::tempdir().expect("tempdir");
    let volume = dir.path().join("tls");
    std::fs::create_dir_all(&volume).expect("mkdir");
    let mut versions: Vec<(PathBuf, Vec<u8>)> = Vec::new();
    for version in ["..data_v1", "..data_v2"] {
        let generated = dir.path().join(format!("generated{version}"));
        let files = generate(&generated);
        let target = volume.join(version);
        std::fs::create_dir_all(&target).expect("mkdir");
        std::fs::copy(&files.cert, target.join("tls.crt")).expect("copy");
        std::fs::copy(&files.key, target.join("tls.key")).expect("copy");
        let ca = std::fs::read(generated.join(SelfSigned::CA_CERT)).expect("ca");
        versions.push((target, ca));
    }
    std::os::unix::fs::symlink("..data_v1", volume.join("..data")).expect("symlink");
    for file in ["tls.crt", "tls.key"] {
        std::os::unix::fs::symlink(format!("..data/{file}"), volume.join(file)).expect("symlink");
    }
    let files = TlsFiles {
        cert: volume.join("tls.crt"),
        key: volume.join("tls.key"),
    };
    let cas: Vec<&[u8]> = versions.iter().map(|(_, ca)| ca.as_slice()).collect();
    let v1 = pem_fingerprint(&versions[0].0.join("tls.crt"));
    let v2 = pem_fingerprint(&versions[1].0.join("tls.crt"));
    assert_ne!(v1, v2);

    // An hour between polls: only the change event can make the switch within the test.
    let webhook = Webhook::start_with(
        files,
        versions[0].1.clone(),
        Some(load_pins(1)),
        Duration::from_secs(3600),
        dir,
        test_options(),
    )
    .await;
    assert_eq!(peer_fingerprint(webhook.addr, &cas).await, v1);

    // One connection held open across the swap keeps working.
    let client = webhook.client();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "web"}]}});
    webhook
        .review(&client, &admission_review("CREATE", REWRITE, &pod, None))
        .await;

    let tmp = volume.join("..data_tmp");
    std::os::unix::fs::symlink("..data_v2", &tmp).expect("symlink");
    std::fs::rename(&tmp, volume.join("..data")).expect("swap ..data");

    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if peer_fingerprint(webhook.addr, &cas).await == v2 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still the old certificate after the swap"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sha2::Sha256::digest(webhook.certs.current().cert[0].as_ref()).to_vec(),
        v2
    );
    let response = webhook
        .review(&client, &admission_review("CREATE", REWRITE, &pod, None))
        .await;
    assert_eq!(response["allowed"], true);
    webhook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_the_server_stays_up() {
    let webhook = Webhook::start(Some(load_pins(1))).await;
    let client = webhook.client();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "web"}]}});
    let valid = admission_review("CREATE", REWRITE, &pod, None).to_string();

    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("garbage", b"\x00\x01\xffgarbage{{".to_vec(), 400),
        ("empty", Vec::new(), 400),
        (
            "truncated JSON",
            valid.as_bytes()[..valid.len() / 2].to_vec(),
            400,
        ),
        ("JSON, not a review", b"[1, 2, 3]".to_vec(), 400),
        (
            "v1beta1",
            valid
                .replace("admission.k8s.io/v1", "admission.k8s.io/v1beta1")
                .into_bytes(),
            400,
        ),
        (
            "no request",
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#.to_vec(),
            400,
        ),
        ("10 MiB", vec![b' '; 10 << 20], 413),
    ];
    for (what, body, status) in cases {
        let (got, text) = webhook.post(&client, body).await;
        assert_eq!(
            got,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&text[..text.len().min(200)])
        );
    }

    // A kind other than Pod: answered, allowed, with a warning.
    let mut deployment = admission_review("CREATE", REWRITE, &pod, None);
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    let response = webhook.review(&client, &deployment).await;
    assert_eq!(response["allowed"], true);
    assert!(warnings(&response)[0].contains("only Pods are handled"));

    // Other methods and paths.
    let get = client
        .get(webhook.url("/mutate"))
        .send()
        .await
        .expect("get");
    assert_eq!(get.status().as_u16(), 405);
    let other = client
        .post(webhook.url("/validate"))
        .body("{}")
        .send()
        .await
        .expect("post");
    assert_eq!(other.status().as_u16(), 404);

    // Still serving.
    let response = webhook
        .review(&client, &admission_review("CREATE", REWRITE, &pod, None))
        .await;
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_some());
    webhook.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_ready_without_pins() {
    let webhook = Webhook::start(None).await;
    let client = webhook.client();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "web"}]}});
    let (status, _) = webhook
        .post(
            &client,
            admission_review("CREATE", REWRITE, &pod, None)
                .to_string()
                .into_bytes(),
        )
        .await;
    // 503: the API server applies the webhook's failurePolicy.
    assert_eq!(status, 503);
    webhook.index.store(load_pins(1));
    let response = webhook
        .review(&client, &admission_review("CREATE", REWRITE, &pod, None))
        .await;
    assert!(response.get("patch").is_some());
    webhook.stop().await;
}

/// Reads until the server closes the connection; true if it did within [`WAIT`].
async fn closed_by_server<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> bool {
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.is_ok()
}

/// Slow clients cannot hold the server: a silent TCP connection, a TLS client that never
/// finishes its request head, and one that never finishes its body are all dropped, while
/// other requests are answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off() {
    let webhook = Webhook::start(Some(load_pins(1))).await;
    let client = webhook.client();
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "web"}]}});

    // Silent before the TLS handshake.
    let mut silent = tokio::net::TcpStream::connect(webhook.addr)
        .await
        .expect("connect");

    // Half a request head, then nothing.
    let mut slow_head = webhook.tls_connect().await;
    slow_head
        .write_all(b"POST /mutate HTTP/1.1\r\nHost: imagelock\r\nContent-Ty")
        .await
        .expect("write");
    slow_head.flush().await.expect("flush");

    // A whole head, half the body, then nothing.
    let body = admission_review("CREATE", REWRITE, &pod, None).to_string();
    let mut slow_body = webhook.tls_connect().await;
    slow_body
        .write_all(
            format!(
                "POST /mutate HTTP/1.1\r\nHost: imagelock\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
                body.len(),
                &body[..body.len() / 2]
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    slow_body.flush().await.expect("flush");

    // Meanwhile the server answers others.
    let response = webhook
        .review(&client, &admission_review("CREATE", REWRITE, &pod, None))
        .await;
    assert_eq!(response["allowed"], true);

    assert!(
        closed_by_server(&mut silent).await,
        "silent TCP client kept"
    );
    assert!(
        closed_by_server(&mut slow_head).await,
        "slow request head kept"
    );
    // The body timeout answers 408 before the connection closes.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, slow_body.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "slow body kept");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    webhook.stop().await;
}

/// Raises this process's open-file limit to the hard limit, as the daemon does for itself:
/// the tests below hold thousands of sockets.
pub(crate) fn raise_open_files(needed: u64) {
    let limit = imagelock::serving::raise_open_file_limit().expect("raise RLIMIT_NOFILE");
    assert!(
        limit.now >= needed,
        "this test needs {needed} open files; the hard limit is {}",
        limit.now
    );
}

/// `count` TCP connections from `from` to `addr` that never send a byte.
pub(crate) async fn open_idle(
    addr: SocketAddr,
    from: std::net::IpAddr,
    count: usize,
) -> Vec<tokio::net::TcpStream> {
    let mut idle = Vec::with_capacity(count);
    for _ in 0..count {
        let socket = match from {
            std::net::IpAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::IpAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        }
        .expect("socket");
        socket.bind(SocketAddr::new(from, 0)).expect("bind");
        let stream = tokio::time::timeout(WAIT, socket.connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        idle.push(stream);
    }
    idle
}

/// How long a new client (a new connection, a new TLS handshake) takes to get `review`
/// answered with 200.
async fn time_a_review(webhook: &Webhook, review: &Value) -> Duration {
    let client = webhook.client();
    let started = std::time::Instant::now();
    let response = webhook.review(&client, review).await;
    let took = started.elapsed();
    assert_eq!(response["allowed"], true, "{response}");
    took
}

/// The issue's bound: a valid AdmissionReview is answered within 1 s while 2,000 idle TCP
/// connections are held open to the webhook, with the server's default limits. First from
/// another peer (as an attacker is), then from the reviewer's own address with no per-peer
/// cap in the way: a handshake that never starts takes no slot, and the oldest pending one
/// makes room for a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_idle_connections_do_not_delay_a_review() {
    const IDLE: usize = 2_000;
    raise_open_files(3 * IDLE as u64);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "web"}]}});
    let review = admission_review("CREATE", REWRITE, &pod, None);
    let localhost: std::net::IpAddr = [127, 0, 0, 1].into();
    let cases = [
        (
            "another peer",
            [127, 0, 0, 2].into(),
            ServerOptions::default(),
        ),
        (
            "the same peer",
            localhost,
            ServerOptions {
                max_connections_per_peer: 10 * IDLE,
                ..ServerOptions::default()
            },
        ),
    ];
    for (case, from, options) in cases {
        let webhook = Webhook::start_with_options(Some(load_pins(1)), options).await;
        let mut idle = open_idle(webhook.addr, from, IDLE).await;
        for _ in 0..3 {
            let took = time_a_review(&webhook, &review).await;
            eprintln!("{case}: a new client answered in {took:?} with {IDLE} idle connections");
            assert!(
                took < Duration::from_secs(1),
                "{case}: answered in {took:?} with {IDLE} idle connections held"
            );
        }
        // None of them is kept past the handshake timeout.
        let closed = futures_util::future::join_all(idle.iter_mut().map(closed_by_server)).await;
        assert!(
            closed.iter().all(|c| *c),
            "{case}: {} idle connections still open after {WAIT:?}",
            closed.iter().filter(|c| !**c).count()
        );
        webhook.stop().await;
    }
}

/// A client that sends request heads declaring 3 MiB bodies and then nothing holds at most
/// its own share of the body memory (its later requests get 503 at once): another client's
/// review is answered at once, not after the body timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_of_one_client_do_not_hold_the_memory_others_need() {
    let webhook = Webhook::start_with_options(Some(load_pins(1)), ServerOptions::default()).await;
    let head = format!(
        "POST /mutate HTTP/1.1\r\nHost: imagelock\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        3 << 20
    );
    let mut stalled = Vec::new();
    // 64 MiB of memory for bodies: 22 such heads would hold all of it.
    for _ in 0..30 {
        let mut tls = webhook.tls_connect_from([127, 0, 0, 2].into()).await;
        tls.write_all(head.as_bytes()).await.expect("write");
        tls.flush().await.expect("flush");
        stalled.push(tls);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "web"}]}});
    let took = time_a_review(&webhook, &admission_review("CREATE", REWRITE, &pod, None)).await;
    assert!(
        took < Duration::from_secs(1),
        "answered in {took:?} while another client's 30 bodies stall"
    );
    // The stalled client's own requests past its share were refused, not queued.
    let mut refused = 0;
    for tls in &mut stalled {
        let mut answer = [0u8; 12];
        if let Ok(Ok(_)) =
            tokio::time::timeout(Duration::from_millis(100), tls.read_exact(&mut answer)).await
        {
            refused += usize::from(answer.starts_with(b"HTTP/1.1 503"));
        }
    }
    assert!(refused >= 20, "{refused} of 30 stalled requests refused");
    drop(stalled);
    webhook.stop().await;
}

/// Slowloris: a client that sends its request head one byte per second is cut at the 2 s
/// header timeout, long before its head is complete, and others are answered meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_is_cut_at_the_header_timeout() {
    let webhook = Webhook::start_with_options(Some(load_pins(1)), ServerOptions::default()).await;
    let tls = webhook.tls_connect().await;
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "web"}]}});
    let review = admission_review("CREATE", REWRITE, &pod, None);
    let head = "POST /mutate HTTP/1.1\r\nHost: imagelock\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n";
    let sent = slowloris(tls, head.as_bytes(), || async {
        time_a_review(&webhook, &review).await;
    })
    .await;
    assert!(
        (2..=5).contains(&sent),
        "cut after {sent} of {} bytes, one a second",
        head.len()
    );

    // On a kept-alive connection, idle between requests is fine, but a head once begun has
    // 2 s too.
    let mut tls = webhook.tls_connect().await;
    tls.write_all(b"GET /mutate HTTP/1.1\r\nHost: imagelock\r\n\r\n")
        .await
        .expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).ends_with("use POST\n") {
        let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    assert!(answer.starts_with(b"HTTP/1.1 405"));
    let kept = tokio::time::timeout(Duration::from_secs(3), tls.read(&mut buf)).await;
    assert!(
        kept.is_err(),
        "an idle kept-alive connection closed within 3 s"
    );
    let sent = slowloris(tls, head.as_bytes(), || async {}).await;
    assert!(
        (2..=5).contains(&sent),
        "second head cut after {sent} of {} bytes",
        head.len()
    );
    webhook.stop().await;
}

/// Sends `head` one byte per second until the server closes the connection, running
/// `meanwhile` after the first byte; returns the bytes sent. Panics if the whole head goes
/// through.
pub(crate) async fn slowloris<S, F, Fut>(stream: S, head: &[u8], meanwhile: F) -> usize
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let (mut read, mut write) = tokio::io::split(stream);
    let mut meanwhile = Some(meanwhile);
    let mut buf = [0u8; 256];
    for (sent, byte) in head.iter().enumerate() {
        if write.write_all(&[*byte]).await.is_err() || write.flush().await.is_err() {
            return sent;
        }
        if let Some(meanwhile) = meanwhile.take() {
            meanwhile().await;
        }
        // A second, or less if the server closes first.
        let closed = tokio::time::timeout(Duration::from_secs(1), async {
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        })
        .await
        .is_ok();
        if closed {
            return sent + 1;
        }
    }
    panic!("the server took the whole head, one byte a second");
}

/// Request bodies in memory are bounded over all connections: while one request has
/// reserved the whole budget (a declared 1 MiB body it never sends), another review waits
/// for it, and is answered once the first is cut off by its body timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_in_memory_are_bounded() {
    let options = ServerOptions {
        max_body_bytes: 1 << 20,
        max_body_bytes_in_flight: 1 << 20,
        body_timeout: Duration::from_secs(2),
        ..test_options()
    };
    let webhook = Webhook::start_with_options(Some(load_pins(1)), options).await;
    let mut hog = webhook.tls_connect().await;
    hog.write_all(
        b"POST /mutate HTTP/1.1\r\nHost: imagelock\r\nContent-Type: application/json\r\nContent-Length: 1048576\r\n\r\n{",
    )
    .await
    .expect("write");
    hog.flush().await.expect("flush");
    // Let the server read the head and reserve the budget.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [{"name": "a", "image": "web"}]}});
    let review = admission_review("CREATE", REWRITE, &pod, None);
    let waiting = {
        let client = webhook.client();
        let url = webhook.url("/mutate");
        tokio::spawn(async move {
            let response = client.post(url).json(&review).send().await.expect("send");
            (response.status().as_u16(), tokio::time::Instant::now())
        })
    };
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, hog.read_to_end(&mut answer))
        .await
        .expect("the hog is cut off")
        .expect("read");
    let hog_cut = tokio::time::Instant::now();
    assert!(
        answer.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let (status, answered) = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("answered")
        .expect("task");
    assert_eq!(status, 200);
    // It could only be read once the hog's reservation was given back.
    assert!(
        answered + Duration::from_millis(100) >= hog_cut,
        "answered {:?} before the hog was cut",
        hog_cut - answered
    );
    webhook.stop().await;
}

/// Polls `check` until it yields a value; panics naming `what` after [`WAIT`] (twice: a
/// daemon pass against a real registry and Git is slower than a request).
async fn wait_until<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + 2 * WAIT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `imagelock serve` in-process with the webhook: not ready until its pins are loaded, then
/// Pods get the digests the daemon itself locked, and a commit of new pins reaches the
/// webhook without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_serves_the_pins_it_commits() {
    use imagelock::daemon::DaemonConfig;
    use imagelock::git::{Checkout, GitAuth, GitTimeouts, RemoteSpec};

    let registry = TestRegistry::start();
    let host = registry.host();
    let web = push_image(
        &host,
        "team-a/web",
        "latest",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let api = push_image(&host, "team-a/api", "v1", ImageSpec::small("linux/amd64")).await;
    let entry = |name: &str, tag: &str| {
        format!("    - name: {name}\n      source: {host}/team-a/{name}\n      tags: [{tag}]\n")
    };
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        (
            "images/team-a/apps.yaml",
            image_set("team-a", "apps", &entry("web", "latest")),
        ),
    ]);
    // libgit2's socket timeouts are process-wide and set by the first checkout: claim the
    // 5 s the git tests rely on, as the daemon tests do.
    let warm = tempfile::tempdir().expect("tempdir");
    Checkout::open_or_clone(
        RemoteSpec {
            url: repo.url(),
            branch: "main".into(),
            auth: GitAuth::None,
        },
        &warm.path().join("repo"),
        GitTimeouts {
            connect: Duration::from_secs(5),
            operation: Duration::from_secs(5),
        },
    )
    .expect("warm-up clone");

    let dir = tempfile::tempdir().expect("tempdir");
    let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let webhook_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let config = DaemonConfig {
        repo: repo.url(),
        workdir: dir.path().join("checkout"),
        poll_interval: "1s".into(),
        insecure_registries: vec![host.clone()],
        admin_listen: admin,
        webhook_listen: Some(webhook_addr),
        tls_self_signed: Some(dir.path().join("tls")),
        webhook_service: SERVICE.into(),
        webhook_namespace: NAMESPACE.into(),
        ..DaemonConfig::default()
    };
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(imagelock::daemon::run(config, shutdown.clone()));
    let _stop = shutdown.clone().drop_guard();

    let http = reqwest::Client::new();
    wait_until("/readyz", || async {
        let response = http
            .get(format!("http://{admin}/readyz"))
            .send()
            .await
            .ok()?;
        (response.status() == 200).then_some(())
    })
    .await;
    let status: Value = http
        .get(format!("http://{admin}/status"))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("status json");
    assert!(status["admission"]["revision"].is_string(), "{status:#}");

    let ca = std::fs::read(dir.path().join("tls").join(SelfSigned::CA_CERT)).expect("ca.crt");
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("ca")])
        .resolve(&format!("{SERVICE}.{NAMESPACE}.svc"), webhook_addr)
        .timeout(WAIT)
        .build()
        .expect("client");
    let url = format!(
        "https://{SERVICE}.{NAMESPACE}.svc:{}/mutate",
        webhook_addr.port()
    );
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team-a"},
        "spec": {"containers": [{"name": "web", "image": "web"}, {"name": "api", "image": "api:v1"}]}});
    let images = || async {
        let review = admission_review("CREATE", "team-a", &pod, None);
        let answer: Value = client
            .post(&url)
            .json(&review)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let after = patched(&pod, &answer["response"]);
        Some([
            after["spec"]["containers"][0]["image"].as_str()?.to_owned(),
            after["spec"]["containers"][1]["image"].as_str()?.to_owned(),
        ])
    };
    let web_pin = format!("{host}/team-a/web@{}", web.digest);
    wait_until("the daemon's pin of web", || async {
        images().await.filter(|i| i[0] == web_pin)
    })
    .await;

    // A new entry is locked, committed and pushed by the daemon; the webhook follows.
    repo.push_change(
        "images/team-a/apps.yaml",
        &image_set(
            "team-a",
            "apps",
            &format!("{}{}", entry("web", "latest"), entry("api", "v1")),
        ),
        "add api",
    );
    let api_pin = format!("{host}/team-a/api@{}", api.digest);
    let both = wait_until("the daemon's pin of api", || async {
        images().await.filter(|i| i[1] == api_pin)
    })
    .await;
    assert_eq!(both[0], web_pin);

    shutdown.cancel();
    tokio::time::timeout(WAIT, daemon)
        .await
        .expect("daemon stops")
        .expect("daemon task")
        .expect("daemon ends cleanly");
}
