//! Load generator for the admission webhook, driven by `scripts/bench-admission`.
//!
//! `generate DIR`: a config repo with N pinned images across M namespaces (manifests and
//! lock files). `load`: AdmissionReviews over TLS (HTTP/2, as the API server speaks it) at a
//! fixed rate (open loop: latency counts from when a request was due, so a stalled server
//! cannot hide its queue) or at saturation (closed loop), printing p50/p99 and throughput.
//!
//! Run by hand: `cargo bench --bench admission -- generate /tmp/repo --source-host HOST`,
//! `cargo bench --bench admission -- load --addr 127.0.0.1:8443 --ca DIR/ca.crt --rate 2000`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use imagelock::lock::{self, LockFile, LockedImage, LockedTag};
use imagelock::reference::Digest;
use rustls::pki_types::pem::PemObject as _;
use serde_json::json;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

/// The generated repo: `images` pinned images spread evenly over `namespaces` namespaces, with
/// their sources at `source_host`. `generate` writes it; `load` builds Pods that name its images.
#[derive(clap::Args, Clone)]
struct RepoShape {
    #[arg(long, default_value_t = 10_000)]
    images: usize,
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    /// Registry host of the sources (the daemon resolves them at start).
    #[arg(long)]
    source_host: String,
}

impl RepoShape {
    fn per_namespace(&self) -> usize {
        self.images.div_ceil(self.namespaces)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Write a config repo with pinned images.
    Generate {
        dir: PathBuf,
        #[command(flatten)]
        shape: RepoShape,
    },
    /// Serve the webhook alone (no reconcile loop) with the pins of a generated repo, until
    /// SIGTERM or Ctrl-C: the webhook's own footprint, apart from the daemon's.
    Serve {
        dir: PathBuf,
        #[arg(long)]
        listen: std::net::SocketAddr,
        /// Where to generate the CA and serving certificate.
        #[arg(long)]
        tls: PathBuf,
    },
    /// Send AdmissionReviews and print latency and throughput.
    Load {
        #[arg(long)]
        addr: std::net::SocketAddr,
        /// CA certificate of the webhook (DIR/ca.crt of --tls-self-signed).
        #[arg(long)]
        ca: PathBuf,
        #[arg(long, default_value = "imagelock.imagelock.svc")]
        server_name: String,
        #[command(flatten)]
        shape: RepoShape,
        /// Requests per second (open loop); 0 for saturation (closed loop).
        #[arg(long, default_value_t = 2000)]
        rate: u64,
        /// Requests in flight at saturation.
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        /// Seconds of measurement (after one second of warm-up).
        #[arg(long, default_value_t = 20)]
        duration: u64,
    },
}

fn digest_of(namespace: usize, image: usize) -> Digest {
    Digest::sha256_of(format!("bench {namespace} {image}").as_bytes())
}

fn app(image: usize) -> String {
    format!("app-{image:05}")
}

fn namespace(n: usize) -> String {
    format!("ns-{n:03}")
}

fn generate(dir: &Path, shape: &RepoShape) -> std::io::Result<()> {
    let host = &shape.source_host;
    std::fs::create_dir_all(dir.join("images"))?;
    std::fs::write(
        dir.join("imagelock.yaml"),
        "apiVersion: imagelock.dev/v1alpha1\nkind: Config\ndefaults: {schedule: \"0 0 1 1 *\"}\nadmission: {default: rewrite}\n",
    )?;
    let per_namespace = shape.per_namespace();
    for n in 0..shape.namespaces {
        let ns = namespace(n);
        let mut manifest = format!(
            "apiVersion: imagelock.dev/v1alpha1\nkind: ImageSet\nmetadata: {{name: apps, namespace: {ns}}}\nspec:\n  images:\n"
        );
        let mut lock = LockFile {
            source: "apps.yaml".into(),
            images: Default::default(),
        };
        for i in (n * per_namespace)..((n + 1) * per_namespace).min(shape.images) {
            let name = app(i);
            let source = format!("{host}/bench/{name}");
            manifest.push_str(&format!(
                "    - {{name: {name}, source: \"{source}\", tags: [v1]}}\n"
            ));
            lock.images.insert(
                name,
                LockedImage {
                    source,
                    mirror: None,
                    tags: [(
                        "v1".to_owned(),
                        LockedTag {
                            digest: digest_of(n, i),
                            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
                            platforms: Default::default(),
                            generation: 1,
                            resolved_at: "2026-11-20T10:00:00Z".into(),
                            pinned: false,
                            history: Vec::new(),
                        },
                    )]
                    .into(),
                },
            );
        }
        let set_dir = dir.join("images").join(&ns);
        std::fs::create_dir_all(&set_dir)?;
        std::fs::write(set_dir.join("apps.yaml"), manifest)?;
        std::fs::write(set_dir.join("apps.lock.yaml"), lock::render(&lock))?;
    }
    Ok(())
}

/// A Pod as a Deployment's ReplicaSet creates it: an alias, a pinned source:tag and an
/// unpinned sidecar, with the fields the API server fills in.
fn review_body(k: usize, shape: &RepoShape) -> Bytes {
    let host = &shape.source_host;
    let per_namespace = shape.per_namespace();
    let n = k % shape.namespaces;
    let first = n * per_namespace;
    let a = first + (k * 7) % per_namespace;
    let b = first + (k * 13 + 1) % per_namespace;
    let ns = namespace(n);
    let container = |name: &str, image: String| {
        json!({"name": name, "image": image, "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}},
               "terminationMessagePath": "/dev/termination-log", "terminationMessagePolicy": "File",
               "imagePullPolicy": "IfNotPresent",
               "volumeMounts": [{"name": "kube-api-access", "readOnly": true, "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"}]})
    };
    let pod = json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"generateName": format!("web-{k}-"), "namespace": ns,
                     "labels": {"app": "web", "pod-template-hash": "5d4f8c7b9"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d4f8c7b9",
                                          "uid": "6b1f6c4e-1111-4c1e-9d2a-0a0b0c0d0e0f", "controller": true, "blockOwnerDeletion": true}]},
        "spec": {
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}}]}}],
            "containers": [
                container("app", app(a)),
                container("worker", format!("{host}/bench/{}:v1", app(b))),
                container("proxy", "envoyproxy/envoy:v1.31.0".to_owned()),
            ],
            "restartPolicy": "Always", "terminationGracePeriodSeconds": 30, "dnsPolicy": "ClusterFirst",
            "serviceAccountName": "default", "securityContext": {}, "schedulerName": "default-scheduler",
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}],
            "priority": 0, "enableServiceLinks": true, "preemptionPolicy": "PreemptLowerPriority"
        },
        "status": {}
    });
    let review = json!({
        "kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": format!("00000000-0000-4000-8000-{k:012}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": ns, "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "1e2f", "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"]},
            "object": pod, "oldObject": null, "dryRun": false,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"}
        }
    });
    Bytes::from(review.to_string())
}

async fn connect(
    addr: std::net::SocketAddr,
    ca: &Path,
    server_name: &str,
    connections: usize,
) -> Result<Vec<SendRequest<Full<Bytes>>>, Box<dyn std::error::Error>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
        roots.add(cert?)?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut senders = Vec::new();
    for _ in 0..connections {
        let tcp = tokio::net::TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())?;
        let tls = connector.connect(name, tcp).await?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(tls))
            .await?;
        tokio::spawn(connection);
        senders.push(sender);
    }
    Ok(senders)
}

/// Sends one review; true when the answer was a 200 with a patch.
async fn send(mut sender: SendRequest<Full<Bytes>>, body: Bytes) -> bool {
    let request = match hyper::Request::post("https://imagelock.imagelock.svc/mutate?timeout=10s")
        .header("content-type", "application/json")
        .body(Full::new(body))
    {
        Ok(request) => request,
        Err(_) => return false,
    };
    if sender.ready().await.is_err() {
        return false;
    }
    match sender.send_request(request).await {
        Ok(response) => {
            let ok = response.status() == 200;
            match response.into_body().collect().await {
                Ok(body) => ok && memchr_patch(&body.to_bytes()),
                Err(_) => false,
            }
        }
        Err(_) => false,
    }
}

fn memchr_patch(body: &[u8]) -> bool {
    body.windows(8).any(|w| w == b"\"patch\":")
}

struct Run {
    latencies: Vec<Duration>,
    errors: usize,
    elapsed: Duration,
}

impl Run {
    fn percentile(&self, p: f64) -> f64 {
        let n = self.latencies.len();
        if n == 0 {
            return 0.0;
        }
        let i = ((n as f64 * p).ceil() as usize).clamp(1, n) - 1;
        self.latencies[i].as_secs_f64() * 1000.0
    }

    fn print_latency(&mut self, label: &str) {
        self.latencies.sort_unstable();
        println!(
            "{label}: {} requests; p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms",
            self.latencies.len(),
            self.percentile(0.50),
            self.percentile(0.99),
            self.percentile(0.999),
            self.percentile(1.0)
        );
    }

    fn print(&mut self, label: &str) {
        self.latencies.sort_unstable();
        let pct = |p: f64| self.percentile(p);
        let n = self.latencies.len();
        println!(
            "{label}: {n} requests in {:.1} s = {:.0} req/s; latency p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms; errors {}",
            self.elapsed.as_secs_f64(),
            n as f64 / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            pct(0.999),
            pct(1.0),
            self.errors
        );
    }
}

/// Open loop: request `i` is due at `start + i / rate` whatever happened before; its latency
/// counts from then. A thread of its own paces the requests: tokio's timer ticks in whole
/// milliseconds, too coarse for 2,000 requests per second.
async fn open_loop(
    senders: &[SendRequest<Full<Bytes>>],
    bodies: &[Bytes],
    rate: u64,
    duration: Duration,
) -> Run {
    let total = (rate as f64 * duration.as_secs_f64()) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let runtime = tokio::runtime::Handle::current();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let senders = senders.to_vec();
    let bodies = bodies.to_vec();
    let start = Instant::now() + Duration::from_millis(10);
    let pacer = std::thread::spawn(move || {
        for i in 0..total {
            let due = start + interval * i as u32;
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let sender = senders[i % senders.len()].clone();
            let body = bodies[i % bodies.len()].clone();
            let task = runtime.spawn(async move {
                let ok = send(sender, body).await;
                (ok, due.elapsed())
            });
            if tx.send(task).is_err() {
                return;
            }
        }
    });
    let mut run = Run {
        latencies: Vec::with_capacity(total),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    while let Some(task) = rx.recv().await {
        match task.await {
            Ok((true, latency)) => run.latencies.push(latency),
            _ => run.errors += 1,
        }
    }
    let _ = pacer.join();
    run.elapsed = start.elapsed();
    run
}

/// Closed loop: `concurrency` requests always in flight.
async fn saturate(
    senders: &[SendRequest<Full<Bytes>>],
    bodies: &[Bytes],
    concurrency: usize,
    duration: Duration,
) -> Run {
    let start = Instant::now();
    let deadline = start + duration;
    let mut workers = Vec::new();
    for w in 0..concurrency {
        let sender = senders[w % senders.len()].clone();
        let bodies = bodies.to_vec();
        workers.push(tokio::spawn(async move {
            let (mut latencies, mut errors, mut k) = (Vec::new(), 0, w);
            while Instant::now() < deadline {
                let sent = Instant::now();
                if send(sender.clone(), bodies[k % bodies.len()].clone()).await {
                    latencies.push(sent.elapsed());
                } else {
                    errors += 1;
                }
                k += concurrency;
            }
            (latencies, errors)
        }));
    }
    let mut run = Run {
        latencies: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for worker in workers {
        if let Ok((latencies, errors)) = worker.await {
            run.latencies.extend(latencies);
            run.errors += errors;
        }
    }
    run.elapsed = start.elapsed();
    run
}

async fn serve(
    dir: &Path,
    listen: std::net::SocketAddr,
    tls: PathBuf,
) -> Result<(), Box<dyn std::error::Error>> {
    use imagelock::admission::{self, CertReloader, IndexHandle, PinIndex, SelfSigned};
    let (index, problems) = PinIndex::load(dir)?;
    if !problems.is_empty() {
        return Err(format!("{} problem(s) in the repo: {problems:?}", problems.len()).into());
    }
    let files = SelfSigned {
        dir: tls,
        service: "imagelock".into(),
        namespace: "imagelock".into(),
    }
    .ensure()?;
    let provider = admission::tls::provider();
    let certs = CertReloader::load(files, provider.clone())?;
    let config = Arc::new(admission::tls::server_config(certs, provider)?);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    imagelock::daemon::cancel_on_signals(shutdown.clone());
    // Server-side time of every request, printed at the end: the server's own latency, apart
    // from the client's and the network's.
    let times = Arc::new(std::sync::Mutex::new(Vec::<Duration>::with_capacity(
        1 << 20,
    )));
    let observer = admission::RequestObserver(Arc::new({
        let times = times.clone();
        move |_, _, took| {
            if let Ok(mut times) = times.lock() {
                times.push(took);
            }
        }
    }));
    println!("ready: {} pins", index.summary().pinned_tags);
    admission::serve(
        listener,
        config,
        IndexHandle::with(index),
        admission::ServerOptions {
            observer: Some(observer),
            ..admission::ServerOptions::default()
        },
        shutdown,
    )
    .await;
    let mut run = Run {
        latencies: std::mem::take(&mut *times.lock().map_err(|_| "poisoned")?),
        errors: 0,
        elapsed: Duration::from_secs(1),
    };
    run.print_latency("server-side time (request head in to response out, warm-up included)");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // `cargo bench` passes `--bench`; the harness is ours, so drop it.
    let args = Args::parse_from(std::env::args().filter(|a| a != "--bench"));
    let runtime = match args.command {
        // The server as the daemon runs it: a worker per core.
        Command::Serve { .. } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?,
        // One thread for the client's I/O, so that the server under test keeps the rest.
        _ => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
    };
    runtime.block_on(run(args.command))
}

async fn run(command: Command) -> Result<(), Box<dyn std::error::Error>> {
    match command {
        Command::Generate { dir, shape } => {
            generate(&dir, &shape)?;
            println!(
                "generated {} images in {} namespaces in {}",
                shape.images,
                shape.namespaces,
                dir.display()
            );
        }
        Command::Serve { dir, listen, tls } => serve(&dir, listen, tls).await?,
        Command::Load {
            addr,
            ca,
            server_name,
            shape,
            rate,
            concurrency,
            connections,
            duration,
        } => {
            let bodies: Vec<Bytes> = (0..2000).map(|k| review_body(k, &shape)).collect();
            println!(
                "request body: {} bytes (a 3-container Pod: alias, pinned source:tag, unpinned)",
                bodies[0].len()
            );
            let senders = connect(addr, &ca, &server_name, connections).await?;
            if !send(senders[0].clone(), bodies[0].clone()).await {
                return Err("the webhook did not answer a review with a patch".into());
            }
            let duration = Duration::from_secs(duration);
            if rate > 0 {
                open_loop(&senders, &bodies, rate, Duration::from_secs(1)).await;
                open_loop(&senders, &bodies, rate, duration)
                    .await
                    .print(&format!("open loop at {rate} req/s"));
            } else {
                saturate(&senders, &bodies, concurrency, Duration::from_secs(1)).await;
                saturate(&senders, &bodies, concurrency, duration)
                    .await
                    .print(&format!("saturation ({concurrency} in flight)"));
            }
        }
    }
    Ok(())
}
