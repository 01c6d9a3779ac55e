//! The real `imagelock serve` binary as a child process, attacked through its ports: idle
//! connections to the admin and hooks ports at a low open-file limit, slow request heads,
//! replayed hooks and a flood of wrong secrets.
//!
//! The child runs with `RLIMIT_NOFILE` 256 (soft and hard, set before exec), so that running
//! out of file descriptors is cheap to provoke; its log (text, stderr) goes to a file the
//! tests read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use hmac::{KeyInit as _, Mac as _};
use serde_json::{Value, json};

use crate::admission::{admission_review, open_idle, patched, slowloris};
use crate::common::{
    ConfigRepo, ImageSpec, TestRegistry, free_port, image_set, push_image, repo_config,
};

/// Upper bound of every wait; only a hang reaches it.
const WAIT: Duration = Duration::from_secs(30);
/// The child's open-file limit, soft and hard.
const CHILD_NOFILE: u64 = 256;
const SECRET: &str = "0123456789abcdef-hook-secret";
const SERVICE: &str = "imagelock";
const NAMESPACE: &str = "imagelock-system";

/// `imagelock serve` with the webhook, the hooks and the admin port on loopback; killed on
/// drop.
struct Child {
    process: tokio::process::Child,
    admin: SocketAddr,
    webhook: SocketAddr,
    hooks: SocketAddr,
    log: PathBuf,
    dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Child {
    /// Starts the daemon on `repo` with `extra` config keys (YAML lines) and waits until it is
    /// ready: the repo loaded and the webhook's pins in memory.
    async fn start(repo: &ConfigRepo, host: &str, extra: &str) -> Child {
        let dir = tempfile::tempdir().expect("tempdir");
        let secret_file = dir.path().join("hook-secret");
        std::fs::write(&secret_file, SECRET).expect("write secret");
        let [admin, webhook, hooks] =
            [(); 3].map(|_| SocketAddr::from(([127, 0, 0, 1], free_port())));
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            format!(
                "repo: {repo}\nworkdir: {workdir}\npollInterval: 1h\ninsecureRegistries: [\"{host}\"]\nadminListen: {admin}\nwebhookListen: {webhook}\ntlsSelfSigned: {tls}\nwebhookService: {SERVICE}\nwebhookNamespace: {NAMESPACE}\nhooksListen: {hooks}\nhookSecretFile: {secret}\n{extra}",
                repo = repo.url(),
                workdir = dir.path().join("checkout").display(),
                tls = dir.path().join("tls").display(),
                secret = secret_file.display(),
            ),
        )
        .expect("write config");
        let log = dir.path().join("daemon.log");
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_imagelock"));
        command
            .args(["serve", "--config"])
            .arg(&config)
            .env("IMAGELOCK_LOG", "info")
            .env("IMAGELOCK_LOG_FORMAT", "text")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .kill_on_drop(true);
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: CHILD_NOFILE as libc::rlim_t,
                    rlim_max: CHILD_NOFILE as libc::rlim_t,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let process = command.spawn().expect("start imagelock serve");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .expect("http client");
        let mut child = Child {
            process,
            admin,
            webhook,
            hooks,
            log,
            dir,
            http,
        };
        let deadline = Instant::now() + WAIT;
        loop {
            let ready = child
                .http
                .get(format!("http://{admin}/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200);
            if ready {
                break;
            }
            if let Ok(Some(status)) = child.process.try_wait() {
                panic!(
                    "imagelock serve exited with {status}:\n{}",
                    child.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "not ready after {WAIT:?}:\n{}",
                child.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        child
    }

    /// The child's log so far, without terminal colour codes.
    fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut plain = String::with_capacity(text.len());
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                // CSI: ESC [ parameters final-byte
                chars.by_ref().find(|c| c.is_ascii_alphabetic());
            } else {
                plain.push(c);
            }
        }
        plain
    }

    /// Descriptors the child has open.
    fn open_fds(&self) -> usize {
        let pid = self.process.id().expect("running");
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// A client of the webhook trusting the child's generated CA; a new one opens a new
    /// connection.
    fn webhook_client(&self) -> reqwest::Client {
        let ca = std::fs::read(self.dir.path().join("tls").join("ca.crt")).expect("ca.crt");
        reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(&ca).expect("ca")])
            .resolve(&format!("{SERVICE}.{NAMESPACE}.svc"), self.webhook)
            .timeout(WAIT)
            .build()
            .expect("client")
    }

    /// Sends a review of a Pod naming `web` from a new connection: how long the answer took
    /// and the Pod's image after it.
    async fn review(&self) -> (Duration, String) {
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "team-a"},
            "spec": {"containers": [{"name": "web", "image": "web"}]}});
        let review = admission_review("CREATE", "team-a", &pod, None);
        let client = self.webhook_client();
        let started = Instant::now();
        let response = client
            .post(format!(
                "https://{SERVICE}.{NAMESPACE}.svc:{}/mutate",
                self.webhook.port()
            ))
            .json(&review)
            .send()
            .await
            .expect("webhook answers");
        assert_eq!(response.status(), 200);
        let answer: Value = response.json().await.expect("review json");
        let took = started.elapsed();
        let after = patched(&pod, &answer["response"]);
        let image = after["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (took, image)
    }

    async fn hook(&self, path: &str, headers: &[(&str, String)], body: &str) -> u16 {
        let mut request = self
            .http
            .post(format!("http://{}{path}", self.hooks))
            .body(body.to_owned());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        request
            .send()
            .await
            .expect("hook answers")
            .status()
            .as_u16()
    }
}

/// A registry with `team-a/web:latest` and a config repo whose ImageSet follows it.
async fn setup() -> (TestRegistry, ConfigRepo, String, String) {
    let registry = TestRegistry::start();
    let host = registry.host();
    let web = push_image(
        &host,
        "team-a/web",
        "latest",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        (
            "images/team-a/apps.yaml",
            image_set(
                "team-a",
                "apps",
                &format!(
                    "    - name: web\n      source: {host}/team-a/web\n      tags: [latest]\n"
                ),
            ),
        ),
    ]);
    let pin = format!("{host}/team-a/web@{}", web.digest);
    (registry, repo, host, pin)
}

/// The caps of the admin and hooks ports lifted, so that only the descriptor reserve stands
/// between their idle connections and the webhook.
const ONLY_THE_FD_RESERVE: &str =
    "adminMaxConnections: 100000\nhooksMaxConnections: 100000\nmaxConnectionsPerPeer: 100000\n";

/// At an open-file limit of 256, 600 idle connections to the admin port and then to the hooks
/// port would take every descriptor; the reserve keeps some for the webhook, which answers a
/// new client within 1 s while they are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_admin_and_hooks_connections_leave_descriptors_for_the_webhook() {
    crate::admission::raise_open_files(4_000);
    let (_registry, repo, host, pin) = setup().await;
    let child = Child::start(&repo, &host, ONLY_THE_FD_RESERVE).await;
    let (_, image) = child.review().await;
    assert_eq!(image, pin);

    for (port, addr) in [("admin", child.admin), ("hooks", child.hooks)] {
        let idle = open_idle(addr, [127, 0, 0, 1].into(), 600).await;
        // Give the child time to accept what it will.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let open = child.open_fds();
        let (took, image) = child.review().await;
        assert_eq!(image, pin);
        assert!(
            took < Duration::from_secs(1),
            "{port}: answered in {took:?} with 600 idle connections held ({open} descriptors open)"
        );
        assert!(
            (open as u64) < CHILD_NOFILE - 8,
            "{port}: {open} descriptors open of {CHILD_NOFILE}"
        );
        drop(idle);
    }
    let log = child.log_text();
    assert!(
        log.contains("connection refused: file descriptors kept for the webhook"),
        "{log}"
    );
    let metrics = child
        .http
        .get(format!("http://{}/metrics", child.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    for server in ["admin", "hooks"] {
        let refused = metrics
            .lines()
            .find(|l| {
                l.starts_with("imagelock_refusals_total{")
                    && l.contains(&format!("server=\"{server}\""))
                    && l.contains("reason=\"fd_reserve\"")
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
        assert!(refused.is_some_and(|n| n > 0), "{server}: {metrics}");
    }
    assert!(!log.contains("webhook: accept failed"), "{log}");
}

/// One header byte per second to the admin port is cut at the 2 s timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_on_the_admin_and_hooks_ports_is_cut() {
    let (_registry, repo, host, _) = setup().await;
    let child = Child::start(&repo, &host, "").await;
    for (addr, head) in [
        (
            child.admin,
            "GET /status HTTP/1.1\r\nHost: imagelock\r\n\r\n",
        ),
        (
            child.hooks,
            "POST /hooks/git HTTP/1.1\r\nHost: imagelock\r\nContent-Length: 0\r\n\r\n",
        ),
    ] {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let sent = slowloris(tcp, head.as_bytes(), || async {
            let status = child
                .http
                .get(format!("http://{}/healthz", child.admin))
                .send()
                .await
                .expect("healthz")
                .status();
            assert_eq!(status, 200);
        })
        .await;
        assert!(
            (2..=5).contains(&sent),
            "{addr}: cut after {sent} bytes, one a second"
        );
    }
}

fn github_signature(body: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(body.as_bytes());
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

fn standard_headers(id: &str, timestamp: i64, body: &str) -> Vec<(&'static str, String)> {
    use base64::Engine as _;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(format!("{id}.{timestamp}.{body}").as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    vec![
        ("webhook-id", id.to_owned()),
        ("webhook-timestamp", timestamp.to_string()),
        ("webhook-signature", format!("v1,{signature}")),
    ]
}

/// Signed hooks are accepted once: a replay, even with a new (unsigned) delivery id, is
/// refused, and so is a signed timestamp out of the window. A flood of wrong secrets is
/// refused and logged in a bounded number of lines, with the count of those held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hook_replays_are_refused_and_a_flood_of_wrong_secrets_logs_a_few_lines() {
    let (_registry, repo, host, _) = setup().await;
    let child = Child::start(&repo, &host, "").await;

    const FLOOD: usize = 300;
    let flood_started = Instant::now();
    for i in 0..FLOOD {
        let status = match i % 3 {
            0 => {
                child
                    .hook("/hooks/git/wrong-secret-of-16-chars", &[], "{}")
                    .await
            }
            1 => {
                let headers = [("x-hub-signature-256", "sha256=00".to_owned())];
                child.hook("/hooks/git", &headers, "{}").await
            }
            _ => {
                let headers = [("x-imagelock-token", format!("{SECRET}x"))];
                child.hook("/hooks/git", &headers, "{}").await
            }
        };
        assert_eq!(status, 401);
    }
    let flood_took = flood_started.elapsed();

    // GitHub style: the body's HMAC, and a delivery id that is not signed.
    let body = r#"{"ref":"refs/heads/main","after":"0a1b2c"}"#;
    let signed = |delivery: &str| {
        vec![
            ("x-hub-signature-256", github_signature(body)),
            ("x-github-delivery", delivery.to_owned()),
        ]
    };
    assert_eq!(child.hook("/hooks/git", &signed("d-1"), body).await, 202);
    assert_eq!(child.hook("/hooks/git", &signed("d-1"), body).await, 409);
    assert_eq!(child.hook("/hooks/git", &signed("d-2"), body).await, 409);
    let other = r#"{"ref":"refs/heads/main","after":"3d4e5f"}"#;
    let headers = vec![("x-hub-signature-256", github_signature(other))];
    assert_eq!(child.hook("/hooks/git", &headers, other).await, 202);

    // Standard Webhooks: id and timestamp signed.
    let now = chrono::Utc::now().timestamp();
    let headers = standard_headers("msg_1", now, body);
    assert_eq!(child.hook("/hooks/git", &headers, body).await, 202);
    assert_eq!(child.hook("/hooks/git", &headers, body).await, 409);
    let stale = standard_headers("msg_2", now - 3600, body);
    assert_eq!(child.hook("/hooks/git", &stale, body).await, 401);
    let ahead = standard_headers("msg_3", now + 3600, body);
    assert_eq!(child.hook("/hooks/git", &ahead, body).await, 401);
    // The signature covers the id: a replay under a new id does not verify.
    let mut renamed = standard_headers("msg_1", now, body);
    renamed[0].1 = "msg_4".to_owned();
    assert_eq!(child.hook("/hooks/git", &renamed, body).await, 401);

    // One more bad request once the interval is over reports how many were held back.
    let interval = Duration::from_secs(10);
    tokio::time::sleep(
        interval.saturating_sub(flood_started.elapsed()) + Duration::from_millis(200),
    )
    .await;
    assert_eq!(
        child.hook("/hooks/git/not-the-secret", &[], "{}").await,
        401
    );
    let log = child.log_text();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("hook refused: missing or wrong secret"))
        .collect();
    // One per 10 s interval the flood (and the last request) touched, whatever its size.
    let intervals = 2 + flood_took.as_secs() as usize / 10;
    assert!(
        (2..=intervals).contains(&lines.len()),
        "{} lines for {} refusals:\n{}",
        lines.len(),
        FLOOD + 4,
        lines.join("\n")
    );
    let held_back: u64 = lines
        .iter()
        .filter_map(|l| {
            let (_, rest) = l.split_once("suppressed=")?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    // Every refusal is either a line or counted in the next one.
    assert_eq!(
        held_back as usize + lines.len(),
        FLOOD + 2,
        "{}",
        lines.join("\n")
    );
    assert!(!log.contains(SECRET), "the secret is never logged");
}
