//! The config repo cannot widen the operator's registry trust: the real binary against real
//! registries and a hostile one that records every `Authorization` header it is sent.

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::common::{
    ConfigRepo, CredentialTrap, FaultProxy, ImageSpec, Pusher, Script, TestRegistry, free_port,
    image_set, operator_command, push_image, repo_config,
};

/// The quay robot's password: it must never leave for another host.
const SECRET: &str = "quay-robot-s3cret-7f3a9";

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// A Docker config with `entries` (key, user, password), in `dir`.
fn docker_config(dir: &Path, entries: &[(&str, &str, &str)]) -> PathBuf {
    let auths: serde_json::Map<String, serde_json::Value> = entries
        .iter()
        .map(|(key, user, password)| {
            (
                (*key).to_owned(),
                serde_json::json!({ "auth": b64(&format!("{user}:{password}")) }),
            )
        })
        .collect();
    let path = dir.join("docker-config.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&serde_json::json!({ "auths": auths })).unwrap(),
    )
    .unwrap();
    path
}

/// Asserts that neither the secret nor its Basic encoding is in `haystack`.
fn assert_no_secret(what: &str, haystack: &str) {
    assert!(
        !haystack.contains(SECRET),
        "{what} leaks the secret: {haystack}"
    );
    assert!(
        !haystack.contains(&b64(&format!("robot:{SECRET}"))),
        "{what} leaks the encoded login: {haystack}"
    );
}

async fn run(command: &mut tokio::process::Command) -> Output {
    command.output().await.expect("run imagelock")
}

/// Runs `imagelock serve` on `repo` with `args` until its `/status` contains `wanted` (and
/// two more passes); returns that status and the daemon's log.
async fn serve_until(repo: &ConfigRepo, args: &[&str], wanted: &str) -> (String, String) {
    let workdir = tempfile::tempdir().unwrap();
    let log_path = workdir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let admin = format!("127.0.0.1:{}", free_port());
    let checkout = workdir.path().join("checkout");
    let mut serve = operator_command(
        &[
            "serve",
            "--repo",
            &repo.url(),
            "--workdir",
            checkout.to_str().unwrap(),
            "--poll-interval",
            "1s",
            "--admin-listen",
            &admin,
        ],
        &[],
    );
    let mut daemon = serve
        .args(args)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start serve");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(response) = http.get(format!("http://{admin}/status")).send().await
            && let Ok(status) = response.text().await
            && status.contains(wanted)
        {
            break status;
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        assert!(
            Instant::now() < deadline,
            "{wanted:?} not in /status; log: {log}"
        );
        assert!(daemon.try_wait().unwrap().is_none(), "serve ended: {log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Two more passes: whatever they would do wrong, they have done.
    tokio::time::sleep(Duration::from_secs(2)).await;
    daemon.start_kill().unwrap();
    daemon.wait().await.unwrap();
    (status, std::fs::read_to_string(&log_path).unwrap())
}

/// The repositories a registry holds (`GET /v2/_catalog`).
async fn catalog(host: &str) -> serde_json::Value {
    reqwest::get(format!("http://{host}/v2/_catalog"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn web_manifest(source_host: &str) -> String {
    image_set(
        "team-a",
        "web",
        &format!("    - {{name: web, source: {source_host}/company/web, tags: [latest]}}\n"),
    )
}

#[tokio::test]
async fn repo_keys_that_granted_trust_are_errors_and_no_login_reaches_the_attacker() {
    let attacker = CredentialTrap::start(Script::BasicChallenge).await;
    let host = attacker.host();
    let attack = format!(
        "apiVersion: imagelock.dev/v1alpha1\nkind: Config\nregistries:\n  \"{host}\": {{insecure: true, credential: quay.example.com}}\n"
    );
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", attack),
        ("images/web.yaml", web_manifest(&host)),
    ]);
    let secrets = tempfile::tempdir().unwrap();
    let docker = docker_config(secrets.path(), &[("quay.example.com", "robot", SECRET)]);
    let docker = docker.to_str().unwrap();

    let check = run(operator_command(&["check"], &[]).arg(&repo.work)).await;
    let plan =
        run(operator_command(&["plan", "--registry-config", docker], &[]).arg(&repo.work)).await;
    for (command, output) in [("check", &check), ("plan", &plan)] {
        let text = text(output);
        assert_eq!(output.status.code(), Some(1), "{command}: {text}");
        assert!(
            text.contains(&format!(
                "imagelock.yaml:4:{}: registries[\"{host}\"].insecure: ",
                host.len() + 18
            )) && text.contains("insecureRegistries"),
            "{command}: {text}"
        );
        assert!(
            text.contains("].credential: ") && text.contains("registryCredentials"),
            "{command}: {text}"
        );
        assert_no_secret(command, &text);
    }
    assert!(
        attacker.requests().is_empty(),
        "nothing is resolved with an invalid imagelock.yaml: {:?}",
        attacker.requests()
    );

    // The daemon: the same diagnostic in /status and the log, no request to the attacker,
    // no commit.
    let (status, log) =
        serve_until(&repo, &["--registry-config", docker], "insecureRegistries").await;
    assert!(status.contains("imagelock.yaml:4:"), "{status}");
    assert_no_secret("/status", &status);
    assert!(log.contains("insecureRegistries"), "{log}");
    assert_no_secret("the daemon's log", &log);
    assert!(attacker.requests().is_empty(), "{:?}", attacker.requests());
    assert_eq!(repo.commit_count(), 1, "nothing was committed");
    assert!(repo.show("images/web.lock.yaml").is_none());

    // Even a host the operator does reach over plain HTTP gets no login that is not its own.
    let honest = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        ("images/web.yaml", web_manifest(&host)),
    ]);
    let plan =
        run(operator_command(&["plan", "--registry-config", docker], &[&host]).arg(&honest.work))
            .await;
    assert_eq!(plan.status.code(), Some(1), "{}", text(&plan));
    assert!(!attacker.requests().is_empty(), "the source was asked");
    assert_eq!(attacker.authorized(), [], "no login went to the attacker");
    assert_no_secret("plan", &text(&plan));
}

#[tokio::test]
async fn a_mirror_registry_the_operator_did_not_allow_gets_nothing() {
    let source = TestRegistry::start();
    let outside = TestRegistry::start();
    let (src, dst) = (source.host(), outside.host());
    push_image(
        &src,
        "company/web",
        "latest",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let config = format!(
        "apiVersion: imagelock.dev/v1alpha1\nkind: Config\nmirror:\n  registry: \"{dst}\"\ndefaults:\n  mirror: true\n"
    );
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", config),
        ("images/web.yaml", web_manifest(&src)),
    ]);
    // The operator reaches both over plain HTTP, but lists another mirror (or none).
    for mirrors in [vec![], vec!["--mirror-registry", "registry.internal"]] {
        let mut command = operator_command(
            &[
                "lock",
                "--insecure-registry",
                &src,
                "--insecure-registry",
                &dst,
            ],
            &[],
        );
        command.args(&mirrors).arg(&repo.work);
        let output = run(&mut command).await;
        let text = text(&output);
        assert_eq!(output.status.code(), Some(1), "{text}");
        assert!(
            text.contains("imagelock.yaml:4:13: mirror.registry ")
                && text.contains(&dst)
                && text.contains("mirrorRegistries"),
            "{text}"
        );
        assert!(!repo.work.join("images/web.lock.yaml").exists(), "{text}");
    }
    let mirror = run(operator_command(
        &[
            "mirror",
            "--insecure-registry",
            &src,
            "--insecure-registry",
            &dst,
        ],
        &[],
    )
    .arg(&repo.work))
    .await;
    assert_eq!(mirror.status.code(), Some(1), "{}", text(&mirror));
    let held = catalog(&dst).await;
    assert_eq!(
        held["repositories"],
        serde_json::json!([]),
        "nothing was copied to {dst}"
    );

    // The daemon: the diagnostic in /status, nothing copied, nothing committed.
    let (status, _) = serve_until(
        &repo,
        &["--insecure-registry", &src, "--insecure-registry", &dst],
        "mirrorRegistries",
    )
    .await;
    assert!(
        status.contains("imagelock.yaml:4:13: mirror.registry"),
        "{status}"
    );
    let held = catalog(&dst).await;
    assert_eq!(held["repositories"], serde_json::json!([]));
    assert_eq!(repo.commit_count(), 1, "nothing was committed");
}

#[tokio::test]
async fn a_login_goes_to_a_token_realm_on_another_host_only_when_the_operator_allows_it() {
    let realm = CredentialTrap::start(Script::Token("stolen-token".into())).await;
    let registry = CredentialTrap::start(Script::BearerRealm(format!(
        "http://{}/token",
        realm.host()
    )))
    .await;
    let host = registry.host();
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        ("images/web.yaml", web_manifest(&host)),
    ]);
    let secrets = tempfile::tempdir().unwrap();
    let docker = docker_config(secrets.path(), &[(&host, "robot", SECRET)]);
    let docker = docker.to_str().unwrap();
    // Both are reached over plain HTTP by the operator's choice; only tokenRealms decides
    // whether the registry's login may go to the realm.
    let plan = run(operator_command(
        &["plan", "--registry-config", docker],
        &[&host, &realm.host()],
    )
    .arg(&repo.work))
    .await;
    let output = text(&plan);
    assert_eq!(plan.status.code(), Some(1), "{output}");
    assert!(output.contains("tokenRealms"), "{output}");
    assert_eq!(realm.requests(), [], "the realm was never asked");
    assert_eq!(registry.authorized(), []);
    assert_no_secret("plan", &output);

    // The control: allowed, the realm gets the login (so the assertion above can fail).
    let allowed = format!("{host}={}", realm.host());
    let plan = run(operator_command(
        &[
            "plan",
            "--registry-config",
            docker,
            "--token-realm",
            &allowed,
        ],
        &[&host, &realm.host()],
    )
    .arg(&repo.work))
    .await;
    let sent = realm.authorized();
    assert!(
        sent.iter().any(|r| r
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic "))),
        "{sent:?} {}",
        text(&plan)
    );
}

#[tokio::test]
async fn a_redirect_to_an_unlisted_host_is_refused() {
    let elsewhere = CredentialTrap::start(Script::BasicChallenge).await;
    let registry =
        CredentialTrap::start(Script::RedirectTo(format!("http://{}", elsewhere.host()))).await;
    let host = registry.host();
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        ("images/web.yaml", web_manifest(&host)),
    ]);
    let plan =
        run(operator_command(&["plan", "--allowed-registry", &host], &[&host]).arg(&repo.work))
            .await;
    let output = text(&plan);
    assert_eq!(plan.status.code(), Some(1), "{output}");
    assert!(output.contains("redirect refused"), "{output}");
    assert!(!registry.requests().is_empty());
    assert_eq!(elsewhere.requests(), [], "the redirect was not followed");

    // Allowed, but not for plain http: a registry's redirect does not make the daemon speak
    // http to a host the operator did not mark insecure.
    let plan = run(operator_command(
        &[
            "plan",
            "--allowed-registry",
            &host,
            "--allowed-registry",
            &elsewhere.host(),
        ],
        &[&host],
    )
    .arg(&repo.work))
    .await;
    let output = text(&plan);
    assert!(output.contains("over plain http"), "{output}");
    assert_eq!(elsewhere.requests(), [], "the redirect was not followed");

    // The control: listed, the redirect is followed.
    run(operator_command(
        &["plan", "--allowed-registry", &host],
        &[&host, &elsewhere.host()],
    )
    .arg(&repo.work))
    .await;
    assert!(!elsewhere.requests().is_empty());
}

#[tokio::test]
async fn a_name_for_a_loopback_address_is_refused_unless_that_name_is_listed() {
    let registry = TestRegistry::start();
    let ip_host = registry.host();
    let port = ip_host.rsplit(':').next().unwrap().to_owned();
    let name_host = format!("localhost:{port}");
    push_image(
        &ip_host,
        "company/web",
        "latest",
        ImageSpec::small("linux/amd64"),
    )
    .await;
    let plan_for = |source: &str, listed: &str| {
        let repo = ConfigRepo::new(&[
            ("imagelock.yaml", repo_config()),
            ("images/web.yaml", web_manifest(source)),
        ]);
        let mut command = operator_command(&["plan"], &[listed]);
        command.arg(&repo.work);
        async move { (run(&mut command).await, repo) }
    };
    for (source, listed) in [(&name_host, &ip_host), (&ip_host, &name_host)] {
        let (plan, _repo) = plan_for(source, listed).await;
        let output = text(&plan);
        assert_eq!(plan.status.code(), Some(1), "{output}");
        assert!(
            output.contains(&format!("{source} is a loopback")),
            "{source} with {listed} listed: {output}"
        );
    }
    // Another spelling of the address: the URL parser reads 0x7f.1 as 127.0.0.1.
    let hex_host = format!("0x7f.1:{port}");
    let (plan, _repo) = plan_for(&hex_host, "registry.internal").await;
    let output = text(&plan);
    assert_eq!(plan.status.code(), Some(1), "{output}");
    assert!(
        output.contains(&format!("{ip_host} is a loopback")),
        "{output}"
    );
    // Listed as written, either name works.
    for host in [&ip_host, &name_host] {
        let (plan, _repo) = plan_for(host, host).await;
        assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    }
}

#[tokio::test]
async fn a_namespace_uses_only_its_own_logins_and_sources() {
    let registry = TestRegistry::start_with_basic_auth("robot", SECRET);
    let pusher = Pusher::with_basic_auth(&registry.host(), "robot", SECRET);
    for repository in ["company/web", "company/secret", "team-b/app"] {
        pusher
            .push_image(repository, "latest", &ImageSpec::small("linux/amd64"))
            .await;
    }
    let proxy = FaultProxy::start(&registry.host()).await;
    let host = proxy.host();
    let secrets = tempfile::tempdir().unwrap();
    let docker = docker_config(secrets.path(), &[(&host, "robot", SECRET)]);
    let operator = secrets.path().join("imagelock.yaml");
    std::fs::write(
        &operator,
        format!(
            "registryConfig: {docker}\ninsecureRegistries: [\"{host}\"]\ntenancy:\n  namespaces:\n    team-a:\n      paths: [\"images/team-a/**\"]\n      credentials: [\"{host}\"]\n    team-b:\n      paths: [\"images/team-b/**\"]\n      sources: [\"{host}/team-b\"]\n",
            docker = docker.display()
        ),
    )
    .unwrap();
    let team_b = image_set(
        "team-b",
        "app",
        &format!(
            "    - {{name: app, source: {host}/team-b/app, tags: [latest]}}\n    - {{name: loot, source: {host}/company/secret, tags: [latest]}}\n"
        ),
    );
    let repo = ConfigRepo::new(&[
        ("imagelock.yaml", repo_config()),
        ("images/team-a/web.yaml", web_manifest(&host)),
        ("images/team-b/app.yaml", team_b),
    ]);
    let plan = run(operator_command(
        &[
            "plan",
            "--format",
            "json",
            "--config",
            operator.to_str().unwrap(),
        ],
        &[],
    )
    .arg(&repo.work))
    .await;
    let output = text(&plan);
    assert_eq!(plan.status.code(), Some(1), "{output}");
    assert!(
        output.contains(&format!(
            "namespace team-b may not use source {host}/company/secret"
        )),
        "{output}"
    );
    assert!(
        output.contains("images/team-a/web.lock.yaml"),
        "team-a resolved with its login: {output}"
    );
    assert_no_secret("plan", &output);
    assert_eq!(proxy.count("company/secret"), 0, "{:#?}", proxy.requests());
    let team_b_requests = proxy.requests_matching("team-b/app");
    assert!(!team_b_requests.is_empty());
    assert!(
        team_b_requests.iter().all(|seen| !seen.authorized),
        "team-b's requests carry no login: {team_b_requests:#?}"
    );
    assert!(
        proxy
            .requests_matching("company/web")
            .iter()
            .any(|seen| seen.authorized && seen.status == 200),
        "team-a's do"
    );
}
