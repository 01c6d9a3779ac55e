"""The MutatingWebhookConfiguration and the three ways to get its certificate."""

from __future__ import annotations

import base64
import shutil
import subprocess
from pathlib import Path
from typing import Any, Callable

import pytest

from chartlib import FAKE_CA_B64, NAMESPACE, Render, values_for

SERVICE_DNS = [
    f"imagelock.{NAMESPACE}.svc",
    f"imagelock.{NAMESPACE}.svc.cluster.local",
    f"imagelock.{NAMESPACE}",
    "imagelock",
]


def name_selector(hook: dict[str, Any]) -> dict[str, Any]:
    (expr,) = [e for e in hook["namespaceSelector"]["matchExpressions"] if e["key"] == "kubernetes.io/metadata.name"]
    return expr


@pytest.mark.parametrize("name", ["defaults", "cert-manager", "existing-secrets", "ha"])
def test_webhook_excludes_the_release_namespace_and_is_opt_in(rendered: dict[str, Render], name: str) -> None:
    hook = rendered[name].webhook
    assert name_selector(hook) == {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": [NAMESPACE, "kube-system"],
    }
    assert {"key": "imagelock.dev/inject", "operator": "In", "values": ["enabled"]} in hook["namespaceSelector"]["matchExpressions"]


def test_release_namespace_is_excluded_even_when_the_list_is_replaced(render: Callable[..., Render]) -> None:
    r = render(values_for("defaults", webhook={"excludeNamespaces": []}), namespace="imagelock-system")
    assert name_selector(r.webhook)["values"] == ["imagelock-system"]
    r = render(values_for("defaults", webhook={"excludeNamespaces": ["kube-system", "imagelock-system"]}), namespace="imagelock-system")
    assert name_selector(r.webhook)["values"] == ["imagelock-system", "kube-system"]


def test_webhook_calls_the_daemon_as_the_design_says(rendered: dict[str, Render]) -> None:
    r = rendered["defaults"]
    hook = r.webhook
    assert hook["name"] == "pods.imagelock.dev"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["reinvocationPolicy"] == "IfNeeded"
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] == 5
    assert hook["rules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["pods"], "scope": "Namespaced"},
        {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "operations": ["UPDATE"],
            "resources": ["pods/ephemeralcontainers"],
            "scope": "Namespaced",
        },
    ]
    # The Service the API server calls exists, answers on 443 and targets the webhook port.
    ref = hook["clientConfig"]["service"]
    assert ref == {"name": "imagelock", "namespace": NAMESPACE, "path": "/mutate", "port": 443}
    service = r.one("Service", ref["name"])
    (port,) = service["spec"]["ports"]
    assert port["port"] == 443 and port["targetPort"] == "webhook"
    assert {"name": "webhook", "containerPort": 8443, "protocol": "TCP"} in r.container["ports"]
    config = r.daemon_config
    assert config["webhookListen"] == "0.0.0.0:8443"
    assert (config["webhookService"], config["webhookNamespace"]) == (ref["name"], ref["namespace"])


def test_pod_updates_that_change_an_image_are_sent(rendered: dict[str, Render]) -> None:
    hook = rendered["defaults"].webhook
    (condition,) = hook["matchConditions"]
    assert condition["name"] == "create-or-image-change"
    expression = condition["expression"]
    assert expression.startswith("request.operation != 'UPDATE' ||")
    for field in ("containers", "initContainers", "ephemeralContainers"):
        assert f"object.spec.{field}.map(c, c.name + '=' + (has(c.image) ? c.image : ''))" in expression
        assert f"(has(oldObject.spec.{field}) ? oldObject.spec.{field}.map(" in expression
    assert expression.count(" != ") == 4 and expression.count(") ||") == 2, expression


def test_pod_updates_can_be_turned_off(render: Callable[..., Render]) -> None:
    hook = render(values_for("defaults", webhook={"podUpdates": False})).webhook
    assert [r["operations"] for r in hook["rules"]] == [["CREATE"], ["UPDATE"]]
    assert [r["resources"] for r in hook["rules"]] == [["pods"], ["pods/ephemeralcontainers"]]
    assert "matchConditions" not in hook


def test_failure_policy_and_timeout_are_configurable(render: Callable[..., Render]) -> None:
    hook = render(values_for("defaults", webhook={"failurePolicy": "Ignore", "timeoutSeconds": 2})).webhook
    assert (hook["failurePolicy"], hook["timeoutSeconds"]) == ("Ignore", 2)


def test_no_webhook_no_tls(rendered: dict[str, Render]) -> None:
    r = rendered["webhook-and-hooks-off"]
    kinds = {o["kind"] for o in r.objects}
    assert "MutatingWebhookConfiguration" not in kinds and "Secret" not in kinds
    assert not {"webhookListen", "tlsCert", "tlsKey", "hooksListen", "hookSecretFile"} & set(r.daemon_config)
    assert [p["name"] for p in r.container["ports"]] == ["admin"]


# --- tls.mode=helm ---------------------------------------------------------------------------


def tls_secret(r: Render) -> dict[str, Any]:
    (secret,) = [s for s in r.of_kind("Secret") if s["type"] == "kubernetes.io/tls"]
    return secret


def test_helm_tls_secret_is_mounted_and_its_ca_is_the_bundle(rendered: dict[str, Render]) -> None:
    r = rendered["defaults"]
    secret = tls_secret(r)
    assert secret["metadata"]["name"] == "imagelock-webhook-tls"
    assert r.webhook["clientConfig"]["caBundle"] == secret["data"]["ca.crt"]
    (volume,) = [v for v in r.pod_spec["volumes"] if v["name"] == "webhook-tls"]
    assert volume["secret"]["secretName"] == "imagelock-webhook-tls"
    assert "cert-manager.io/inject-ca-from" not in r.one("MutatingWebhookConfiguration")["metadata"].get("annotations", {})


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to inspect the generated certificate")
def test_helm_tls_certificate_is_signed_by_the_bundle_for_the_service_names(rendered: dict[str, Render], tmp_path: Path) -> None:
    data = tls_secret(rendered["defaults"])["data"]
    for key in ("ca.crt", "tls.crt", "tls.key"):
        (tmp_path / key).write_bytes(base64.b64decode(data[key]))
    openssl = lambda *args: subprocess.run(["openssl", *args], cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    assert "tls.crt: OK" in openssl("verify", "-CAfile", "ca.crt", "tls.crt")
    sans = openssl("x509", "-in", "tls.crt", "-noout", "-ext", "subjectAltName")
    assert [s.strip().removeprefix("DNS:") for s in sans.splitlines()[1].split(",")] == SERVICE_DNS
    # The key belongs to the certificate.
    assert openssl("x509", "-in", "tls.crt", "-noout", "-pubkey") == openssl("pkey", "-in", "tls.key", "-pubout")


def test_helm_tls_keeps_the_existing_certificate_on_upgrade(render_upgrade: Callable[..., Render]) -> None:
    existing = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": "imagelock-webhook-tls", "namespace": NAMESPACE},
        "data": {k: base64.b64encode(f"existing {k}".encode()).decode() for k in ("ca.crt", "tls.crt", "tls.key")},
    }
    r = render_upgrade(values_for("defaults"), [existing])
    assert tls_secret(r)["data"] == existing["data"]
    assert r.webhook["clientConfig"]["caBundle"] == existing["data"]["ca.crt"]


def test_helm_tls_generates_a_certificate_when_the_cluster_has_none(render_upgrade: Callable[..., Render]) -> None:
    r = render_upgrade(values_for("defaults"), [])
    assert base64.b64decode(tls_secret(r)["data"]["ca.crt"]).startswith(b"-----BEGIN CERTIFICATE-----")


def test_generated_hook_secret_is_kept_on_upgrade(render_upgrade: Callable[..., Render]) -> None:
    existing = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "imagelock-hooks", "namespace": NAMESPACE},
        "data": {"secret": base64.b64encode(b"registries-know-this").decode()},
    }
    r = render_upgrade(values_for("defaults"), [existing])
    assert r.one("Secret", "imagelock-hooks")["data"]["secret"] == existing["data"]["secret"]


# --- tls.mode=certManager --------------------------------------------------------------------


def test_cert_manager_mode_renders_a_certificate_and_the_inject_annotation(rendered: dict[str, Render]) -> None:
    r = rendered["cert-manager"]
    certificate = r.one("Certificate", "imagelock-webhook")
    spec = certificate["spec"]
    assert spec["secretName"] == "imagelock-webhook-tls"
    assert spec["dnsNames"] == SERVICE_DNS
    assert spec["issuerRef"] == {"name": "imagelock-ca", "kind": "Issuer", "group": "cert-manager.io"}
    # Our own CA: self-signed Issuer -> CA Certificate -> CA Issuer -> serving Certificate.
    assert r.one("Issuer", "imagelock-selfsigned")["spec"] == {"selfSigned": {}}
    assert r.one("Certificate", "imagelock-ca")["spec"]["isCA"] is True
    assert r.one("Issuer", "imagelock-ca")["spec"] == {"ca": {"secretName": "imagelock-ca"}}

    mwc = r.one("MutatingWebhookConfiguration")
    assert mwc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/imagelock-webhook"
    assert "caBundle" not in mwc["webhooks"][0]["clientConfig"]
    # cert-manager writes the TLS Secret; the chart generates none.
    assert [s for s in r.of_kind("Secret") if s["type"] == "kubernetes.io/tls"] == []
    (volume,) = [v for v in r.pod_spec["volumes"] if v["name"] == "webhook-tls"]
    assert volume["secret"]["secretName"] == spec["secretName"]


def test_cert_manager_with_an_issuer_of_yours_creates_no_issuer(rendered: dict[str, Render]) -> None:
    r = rendered["cert-manager-issuer"]
    assert r.of_kind("Issuer") == []
    (certificate,) = r.of_kind("Certificate")
    assert certificate["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer"}


# --- tls.mode=existingSecret -----------------------------------------------------------------


def test_existing_tls_secret_and_ca_bundle_are_used(rendered: dict[str, Render]) -> None:
    r = rendered["existing-secrets"]
    assert r.webhook["clientConfig"]["caBundle"] == FAKE_CA_B64
    (volume,) = [v for v in r.pod_spec["volumes"] if v["name"] == "webhook-tls"]
    assert volume["secret"]["secretName"] == "corp-webhook-tls"
    assert r.of_kind("Certificate") == []
