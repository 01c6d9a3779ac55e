"""The daemon's Pod: security, probes, its config file and the Secrets behind the paths it names."""

from __future__ import annotations

import base64
import json
import posixpath
from typing import Any, Callable

import helm_python
import pytest

from chartlib import NAMESPACE, REPO, VALUE_SETS, Render, values_for

# Every key the daemon's config file may hold (DaemonConfig in src/daemon/mod.rs is
# deny_unknown_fields, so any other key stops the daemon at start). Keep in sync with it.
DAEMON_CONFIG_KEYS = {
    "repo", "branch", "workdir", "pollInterval", "gitTokenFile", "gitSshKey", "gitSshPassphraseFile",
    "registryConfig", "insecureRegistries", "adminListen", "pushAttempts",
    # registry trust
    "allowedRegistries", "mirrorRegistries", "registryCredentials", "tokenRealms", "registryLimits", "tenancy",
    # the webhook
    "webhookListen", "tlsCert", "tlsKey", "tlsSelfSigned", "webhookService", "webhookNamespace",
    # push hooks
    "hooksListen", "hookSecretFile",
    # leader election (podName normally comes from IMAGELOCK_POD_NAME)
    "leaderElection", "leaseName", "leaseNamespace", "podName", "leaseDuration", "leaseRenewDeadline",
    "leaseRetryPeriod",
    # bounded work
    "entryTimeout", "mirrorTimeout",
}
# Config keys that name a file the daemon reads.
FILE_KEYS = ["gitTokenFile", "gitSshKey", "gitSshPassphraseFile", "registryConfig", "tlsCert", "tlsKey", "hookSecretFile"]

# Pod Security Standards, "restricted" profile (which includes "baseline").
RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def pss_restricted_violations(pod: dict[str, Any]) -> list[str]:
    """What keeps a Pod spec from Pod Security "restricted" (kubernetes.io/docs/concepts/security/pod-security-standards)."""
    out = []
    psc = pod.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(field):
            out.append(field)
    for volume in pod.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            out.append(f"volume {volume['name']}: {kinds}")
    if psc.get("seccompProfile", {}).get("type") not in ("RuntimeDefault", "Localhost", None):
        out.append("pod seccompProfile")
    if psc.get("runAsUser") == 0:
        out.append("pod runAsUser 0")
    for container in pod.get("initContainers", []) + pod["containers"]:
        name = container["name"]
        sc = container.get("securityContext", {})
        if sc.get("privileged"):
            out.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(f"{name}: allowPrivilegeEscalation is not false")
        if not (sc.get("runAsNonRoot") is True or (psc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is not False)):
            out.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser") == 0:
            out.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(f"{name}: seccompProfile {seccomp}")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            out.append(f"{name}: capabilities not dropped")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            out.append(f"{name}: capabilities added")
        if any(p.get("hostPort") for p in container.get("ports", [])):
            out.append(f"{name}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            out.append(f"{name}: procMount")
    return out


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_pod_is_restricted_and_read_only(rendered: dict[str, Render], name: str) -> None:
    r = rendered[name]
    assert pss_restricted_violations(r.pod_spec) == []
    sc = r.container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert r.pod_spec["securityContext"]["runAsUser"] == 65532  # the image's USER
    # Writable places are emptyDirs: the clone and /tmp.
    mounts = {m["mountPath"]: m["name"] for m in r.container["volumeMounts"]}
    volumes = {v["name"]: v for v in r.pod_spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/var/lib/imagelock"]]
    assert "emptyDir" in volumes[mounts["/tmp"]]
    assert r.daemon_config["workdir"] == "/var/lib/imagelock/checkout"
    assert r.container["resources"]["requests"] and r.container["resources"]["limits"]


@pytest.mark.parametrize("admin_port", [8081, 9090])
def test_probes_hit_the_admin_port(render: Callable[..., Render], admin_port: int) -> None:
    r = render(values_for("defaults", admin={"port": admin_port}))
    ports = {p["name"]: p["containerPort"] for p in r.container["ports"]}
    liveness, readiness = r.container["livenessProbe"]["httpGet"], r.container["readinessProbe"]["httpGet"]
    assert (liveness["path"], ports[liveness["port"]]) == ("/healthz", admin_port)
    assert (readiness["path"], ports[readiness["port"]]) == ("/readyz", admin_port)
    assert r.daemon_config["adminListen"] == f"0.0.0.0:{admin_port}"
    (svc_port,) = r.one("Service", "imagelock-admin")["spec"]["ports"]
    assert ports[svc_port["targetPort"]] == admin_port


def test_daemon_runs_serve_with_the_config_file(rendered: dict[str, Render]) -> None:
    r = rendered["defaults"]
    assert r.container["args"] == ["serve", "--config", "/etc/imagelock/config.yaml"]
    mounts = {m["mountPath"]: m["name"] for m in r.container["volumeMounts"]}
    (config_volume,) = [v for v in r.pod_spec["volumes"] if v["name"] == mounts["/etc/imagelock"]]
    assert config_volume["configMap"]["name"] == r.one("ConfigMap")["metadata"]["name"]
    assert {"path": "config.yaml", "key": "config.yaml"} in config_volume["configMap"]["items"]
    env = {e["name"]: e for e in r.container["env"]}
    assert env["IMAGELOCK_POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["IMAGELOCK_LOG_FORMAT"]["value"] == "json"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_config_has_only_daemon_keys_and_its_files_are_mounted(rendered: dict[str, Render], name: str) -> None:
    r = rendered[name]
    config = r.daemon_config
    assert set(config) <= DAEMON_CONFIG_KEYS
    assert config["repo"] and config["pollInterval"] == "60s" and config["pushAttempts"] == 5
    mounts = {m["mountPath"]: m for m in r.container["volumeMounts"]}
    volumes = {v["name"]: v for v in r.pod_spec["volumes"]}
    for key in FILE_KEYS:
        if key not in config:
            continue
        directory, file = posixpath.split(config[key])
        mount = mounts.get(directory)
        assert mount, f"{name}: {key} {config[key]}: nothing is mounted at {directory}"
        assert mount.get("readOnly") is True and "subPath" not in mount  # subPath mounts miss Secret updates
        secret = volumes[mount["name"]]["secret"]
        assert file in [item["path"] for item in secret["items"]], f"{name}: {key}: no item {file}"


def test_config_follows_the_values(render: Callable[..., Render]) -> None:
    r = render(
        values_for(
            "defaults",
            config={
                "branch": "prod",
                "pollInterval": "5m",
                "pushAttempts": 3,
                "entryTimeout": "45s",
                "insecureRegistries": ["registry.internal:5000"],
                "allowedRegistries": ["quay.io", "*.cloudfront.net"],
                "mirrorRegistries": ["registry.internal:5000"],
                "registryCredentials": {"quay.io": "quay-robot"},
                "tokenRealms": {"quay.io": ["auth.quay.io"]},
                "registryLimits": {"docker.io": {"rateLimit": 10, "concurrency": 4}},
                "extra": {"tlsSelfSigned": None, "pollInterval": "10m"},
            },
            listenHost="[::]",
        )
    )
    config = r.daemon_config
    assert config["branch"] == "prod"
    assert config["pushAttempts"] == 3
    assert (config["entryTimeout"], config["mirrorTimeout"]) == ("45s", "30m")
    assert config["insecureRegistries"] == ["registry.internal:5000"]
    assert config["allowedRegistries"] == ["quay.io", "*.cloudfront.net"]
    assert config["mirrorRegistries"] == ["registry.internal:5000"]
    assert config["registryCredentials"] == {"quay.io": "quay-robot"}
    assert config["tokenRealms"] == {"quay.io": ["auth.quay.io"]}
    assert config["registryLimits"] == {"docker.io": {"rateLimit": 10, "concurrency": 4}}
    assert config["pollInterval"] == "10m"  # config.extra wins
    assert config["adminListen"] == "[::]:8081" and config["webhookListen"] == "[::]:8443"


def test_tenancy_mounts_each_namespaces_pull_secret_as_its_registry_config(render: Callable[..., Render]) -> None:
    tenancy = {
        "namespaces": {
            "team-a": {"paths": ["images/team-a/**"], "credentials": ["quay.io"], "registrySecret": "team-a-pull"},
            "team-b": {"paths": ["images/team-b/**"], "sources": ["ghcr.io/team-b/"]},
        },
        "sharedSets": ["images/platform/**"],
    }
    r = render(values_for("defaults", config={"tenancy": tenancy}))
    rendered = r.daemon_config["tenancy"]
    assert rendered["sharedSets"] == ["images/platform/**"]
    team_a, team_b = rendered["namespaces"]["team-a"], rendered["namespaces"]["team-b"]
    assert "registrySecret" not in team_a and "registryConfig" not in team_b
    assert team_b == {"paths": ["images/team-b/**"], "sources": ["ghcr.io/team-b/"]}
    directory, file = posixpath.split(team_a["registryConfig"])
    mounts = {m["mountPath"]: m for m in r.container["volumeMounts"]}
    volumes = {v["name"]: v for v in r.pod_spec["volumes"]}
    mount = mounts[directory]
    assert mount["readOnly"] is True and "subPath" not in mount
    secret = volumes[mount["name"]]["secret"]
    assert secret["secretName"] == "team-a-pull"
    assert secret["items"] == [{"key": ".dockerconfigjson", "path": file}]
    # The operator's values are checked: a typo in a namespace's policy fails the install.
    with pytest.raises(helm_python.HelmValuesError, match="path"):
        render(values_for("defaults", config={"tenancy": {"namespaces": {"team-a": {"path": ["x"]}}}}))


def test_one_replica_has_no_leader_election_and_no_api_access(rendered: dict[str, Render]) -> None:
    r = rendered["defaults"]
    assert not {"leaderElection", "leaseName", "leaseNamespace"} & set(r.daemon_config)
    assert r.of_kind("PodDisruptionBudget") == [] and r.of_kind("Role") == [] and r.of_kind("RoleBinding") == []
    assert r.pod_spec["automountServiceAccountToken"] is False


def test_three_replicas_elect_a_leader_and_have_a_pdb(rendered: dict[str, Render]) -> None:
    r = rendered["ha"]
    assert r.deployment["spec"]["replicas"] == 3
    config = r.daemon_config
    assert config["leaderElection"] is True
    assert (config["leaseName"], config["leaseNamespace"]) == ("imagelock", NAMESPACE)

    pdb = r.one("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == r.deployment["spec"]["selector"]["matchLabels"]

    # Least privilege: the Lease and nothing else, in the release namespace only.
    assert r.of_kind("ClusterRole") == [] and r.of_kind("ClusterRoleBinding") == []
    role = r.one("Role")
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "resourceNames": ["imagelock"], "verbs": ["get", "update"]},
    ]
    binding = r.one("RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": r.pod_spec["serviceAccountName"], "namespace": NAMESPACE}]
    assert r.pod_spec["automountServiceAccountToken"] is True


def test_existing_secrets_are_referenced_and_none_is_created(rendered: dict[str, Render]) -> None:
    r = rendered["existing-secrets"]
    assert r.of_kind("Secret") == []
    volumes = {v["name"]: v.get("secret") for v in r.pod_spec["volumes"]}
    assert volumes["git-credentials"] == {
        "secretName": "corp-git", "defaultMode": 0o440, "items": [{"key": "password", "path": "token"}]
    }
    assert volumes["registry-credentials"]["secretName"] == "corp-registry"
    assert volumes["registry-credentials"]["items"] == [{"key": ".dockerconfigjson", "path": "config.json"}]
    assert volumes["hooks-secret"]["secretName"] == "corp-hooks"
    assert volumes["hooks-secret"]["items"] == [{"key": "shared", "path": "secret"}]
    assert volumes["webhook-tls"]["secretName"] == "corp-webhook-tls"
    config = r.daemon_config
    assert config["gitTokenFile"] == "/var/run/secrets/imagelock/git/token"
    assert config["registryConfig"] == "/var/run/secrets/imagelock/registry/config.json"


def decoded(secret: dict[str, Any]) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}


def test_chart_made_secrets_hold_the_values(rendered: dict[str, Render]) -> None:
    r = rendered["chart-secrets-ssh"]
    values = VALUE_SETS["chart-secrets-ssh"]
    git = decoded(r.one("Secret", "imagelock-git"))
    assert git == {"ssh-privatekey": values["git"]["ssh"]["privateKey"], "ssh-passphrase": "hunter2"}
    config = r.daemon_config
    assert config["gitSshKey"] == "/var/run/secrets/imagelock/git/ssh-privatekey"
    assert config["gitSshPassphraseFile"] == "/var/run/secrets/imagelock/git/ssh-passphrase"
    assert "gitTokenFile" not in config

    registry = r.one("Secret", "imagelock-registry")
    assert registry["type"] == "kubernetes.io/dockerconfigjson"
    auths = json.loads(decoded(registry)[".dockerconfigjson"])["auths"]
    assert auths["quay.io"] == {
        "username": "company+imagelock",
        "password": "s3cret",
        "auth": base64.b64encode(b"company+imagelock:s3cret").decode(),
    }
    assert set(auths) == {"quay.io", "internal-robot"}
    assert decoded(r.one("Secret", "imagelock-hooks")) == {"secret": "from-values"}

    # known_hosts lands where libgit2 looks: $HOME/.ssh/known_hosts.
    env = {e["name"]: e.get("value") for e in r.container["env"]}
    mounts = {m["mountPath"]: m["name"] for m in r.container["volumeMounts"]}
    volume = next(v for v in r.pod_spec["volumes"] if v["name"] == mounts[f"{env['HOME']}/.ssh"])
    assert volume["configMap"]["items"] == [{"key": "known_hosts", "path": "known_hosts"}]
    assert r.one("ConfigMap")["data"]["known_hosts"].startswith("git.example.com ssh-ed25519 ")


def test_public_repo_needs_no_git_secret(rendered: dict[str, Render]) -> None:
    r = rendered["defaults"]
    assert r.one("ConfigMap")["data"]["config.yaml"]
    assert not any(s["metadata"]["name"] == "imagelock-git" for s in r.of_kind("Secret"))
    assert not {"gitTokenFile", "gitSshKey", "registryConfig"} & set(r.daemon_config)


def test_a_changed_config_rolls_the_pods(render: Callable[..., Render]) -> None:
    checksum = lambda r: r.deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    a = render(values_for("defaults"))
    b = render(values_for("defaults"))
    c = render(values_for("defaults", config={"branch": "prod"}))
    # Generated certificates and hook secrets differ between renders; the checksum must not.
    assert checksum(a) == checksum(b) != checksum(c)


def test_image_by_tag_or_digest(render: Callable[..., Render]) -> None:
    assert render(values_for("defaults")).container["image"] == "ghcr.io/imagelock/imagelock:0.1.0"
    digest = "sha256:" + "ab" * 32
    assert render(values_for("defaults", image={"digest": digest})).container["image"] == f"ghcr.io/imagelock/imagelock@{digest}"


def test_service_monitor_scrapes_the_admin_service(rendered: dict[str, Render]) -> None:
    r = rendered["monitoring-networkpolicy"]
    monitor = r.one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    services = [
        s for s in r.of_kind("Service")
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in services] == ["imagelock-admin"]
    assert endpoint["port"] in [p["name"] for p in services[0]["spec"]["ports"]]
    assert rendered["defaults"].of_kind("ServiceMonitor") == []


def test_network_policy_opens_the_daemon_ports_only(rendered: dict[str, Render]) -> None:
    r = rendered["monitoring-networkpolicy"]
    policy = r.one("NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == r.deployment["spec"]["selector"]["matchLabels"]
    by_port = {rule["ports"][0]["port"]: rule for rule in policy["spec"]["ingress"]}
    assert set(by_port) == {p["name"] for p in r.container["ports"]} == {"admin", "webhook", "hooks"}
    assert "from" not in by_port["webhook"]  # the API server comes from outside the pod network
    assert by_port["hooks"]["from"] == VALUE_SETS["monitoring-networkpolicy"]["networkPolicy"]["hooksFrom"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert policy["spec"]["egress"][0]["ports"] == [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    assert rendered["defaults"].of_kind("NetworkPolicy") == []


def test_hooks_ingress_exposes_only_the_hooks(rendered: dict[str, Render]) -> None:
    r = rendered["monitoring-networkpolicy"]
    (rule,) = r.one("Ingress")["spec"]["rules"]
    (path,) = rule["http"]["paths"]
    assert (rule["host"], path["path"]) == ("imagelock-hooks.example.com", "/hooks")
    assert path["backend"]["service"] == {"name": "imagelock-hooks", "port": {"name": "hooks"}}
    hooks_service = r.one("Service", "imagelock-hooks")
    assert hooks_service["spec"]["ports"][0]["targetPort"] == "hooks"
    assert r.daemon_config["hooksListen"] == "0.0.0.0:8082"


def test_release_name_and_namespace_flow_everywhere(render: Callable[..., Render]) -> None:
    r = render(values_for("ha"), name="pins", namespace="ops")
    for obj in r.objects:
        if obj["kind"] != "MutatingWebhookConfiguration":
            assert obj["metadata"]["namespace"] == "ops", obj["kind"]
        assert obj["metadata"]["name"].startswith("pins-imagelock"), obj["kind"]
    config = r.daemon_config
    assert (config["webhookService"], config["webhookNamespace"], config["leaseNamespace"]) == ("pins-imagelock", "ops", "ops")
    assert r.webhook["clientConfig"]["service"]["name"] == "pins-imagelock"
    assert REPO == config["repo"]
