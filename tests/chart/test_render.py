"""Lint, values schema and Kubernetes schemas: every value set renders objects the API server accepts."""

from __future__ import annotations

from typing import Any

import helm_python
import kubernetes_validate
import pytest

from chartlib import CHART_DIR, NAMESPACE, REPO, VALUE_SETS, Render, values_for

# The chart's minimum (Chart.yaml kubeVersion) and a recent release.
KUBE_VERSIONS = ("1.25.0", "1.34.0")

# Kinds of CRDs the chart can render. kubernetes-validate ships the built-in API only, so these
# are checked by hand (check_custom_resource) instead: apiVersion, names and the spec fields
# the chart relies on.
CUSTOM_KINDS = {
    ("cert-manager.io/v1", "Issuer"),
    ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_lint_is_clean(name: str) -> None:
    report = helm_python.lint(CHART_DIR, values_for(name), strict=True, namespace=NAMESPACE, kube_version="v1.34.0")
    assert report["errors"] == []
    # Severity 2 is a warning, 3 an error; "icon is recommended" (1, info) is all that may remain.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_every_object_is_valid_kubernetes(rendered: dict[str, Render], name: str) -> None:
    objects = rendered[name].objects
    assert objects
    errors = []
    for obj in objects:
        where = f"{obj.get('kind')} {obj.get('metadata', {}).get('name')}"
        if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
            check_custom_resource(obj)
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(as_rendered_for(obj, version), version, strict=True)
            except kubernetes_validate.ValidationError as e:
                # The first line names the problem; the rest is the whole schema.
                errors.append(f"{where}, Kubernetes {version}, at {e.json_path}: {str(e).splitlines()[0]}")
            except kubernetes_validate.SchemaNotFoundError:
                errors.append(f"{where}: no Kubernetes {version} schema; add the kind to CUSTOM_KINDS with a hand check")
    assert errors == []


def as_rendered_for(obj: dict[str, Any], version: str) -> dict[str, Any]:
    """`obj` as the chart renders it for a cluster of `version`: the render here is for a recent
    cluster, and the webhook's matchConditions are rendered only for 1.28 and later
    (`.Capabilities.KubeVersion`)."""
    major, minor = (int(part) for part in version.split(".")[:2])
    if obj["kind"] != "MutatingWebhookConfiguration" or (major, minor) >= (1, 28):
        return obj
    return {**obj, "webhooks": [{k: v for k, v in hook.items() if k != "matchConditions"} for hook in obj["webhooks"]]}


def check_custom_resource(obj: dict[str, Any]) -> None:
    meta = obj["metadata"]
    assert set(obj) == {"apiVersion", "kind", "metadata", "spec"}
    assert meta["name"] and meta["namespace"] == NAMESPACE
    spec = obj["spec"]
    match obj["kind"]:
        case "Issuer":
            assert len(spec) == 1 and ("selfSigned" in spec or "secretName" in spec.get("ca", {}))
        case "Certificate":
            assert spec["secretName"]
            assert set(spec["issuerRef"]) <= {"name", "kind", "group"} and spec["issuerRef"]["name"]
            assert spec.get("isCA") or spec["dnsNames"]
            assert set(spec) <= {
                "secretName", "commonName", "dnsNames", "duration", "renewBefore", "usages",
                "privateKey", "issuerRef", "isCA",
            }
        case "ServiceMonitor":
            assert spec["selector"]["matchLabels"]
            for endpoint in spec["endpoints"]:
                assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}
        case _:
            pytest.fail(f"no hand check for {obj['kind']}")


def test_every_template_renders_something_in_some_value_set(rendered: dict[str, Render]) -> None:
    templates = {path for r in rendered.values() for path in r.manifests}
    produced = {path for r in rendered.values() for path, text in r.manifests.items() if text.strip()}
    assert templates - produced == set(), "templates no value set exercises"


def test_names_are_unique_per_kind(rendered: dict[str, Render]) -> None:
    for name, r in rendered.items():
        keys = [(o["kind"], o["metadata"]["name"]) for o in r.objects]
        assert len(keys) == len(set(keys)), f"{name}: duplicate objects"


@pytest.mark.parametrize(
    "bad, where",
    [
        ({"replicas": 2}, "additional properties 'replicas'"),
        ({"config": {"repo": REPO, "pollIntervall": "5m"}}, "/config"),
        ({"webhook": {"failurePolicy": "Maybe"}}, "/webhook/failurePolicy"),
        ({"webhook": {"timeoutSeconds": 31}}, "/webhook/timeoutSeconds"),
        ({"tls": {"mode": "selfSigned"}}, "/tls/mode"),
        ({"git": {"auth": "password"}}, "/git/auth"),
        ({"git": {"ssh": {"key": "x"}}}, "/git/ssh"),
        ({"registry": {"auths": {"quay.io": {"user": "x", "password": "y"}}}}, "/registry/auths"),
        ({"image": {"digest": "latest"}}, "/image/digest"),
        ({"replicaCount": 0}, "/replicaCount"),
    ],
)
def test_values_schema_is_strict(chart: helm_python.Chart, bad: dict[str, Any], where: str) -> None:
    with pytest.raises(helm_python.HelmValuesError, match=where):
        chart.validate_schema(values_for("defaults", **bad))


@pytest.mark.parametrize(
    "values, message",
    [
        ({}, "config.repo is required"),
        ({"config": {"repo": REPO}, "git": {"auth": "token"}}, "git.auth=token needs git.token or git.existingSecret"),
        (
            {"config": {"repo": REPO}, "git": {"auth": "ssh", "ssh": {"privateKey": "k"}}},
            "git.auth=ssh needs git.ssh.knownHosts",
        ),
        ({"config": {"repo": REPO}, "tls": {"mode": "existingSecret"}}, "needs tls.existingSecret"),
        (
            {"config": {"repo": REPO}, "tls": {"mode": "existingSecret", "existingSecret": "x"}},
            "needs tls.caBundle",
        ),
        ({"config": {"repo": REPO}, "hooks": {"port": 8081}}, "must differ"),
    ],
)
def test_wrong_combinations_fail_with_the_fix(chart: helm_python.Chart, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm_python.HelmRenderError, match=message):
        chart.render(values, name="imagelock", namespace=NAMESPACE)


def test_notes_say_how_to_opt_in_and_warn_about_one_replica_with_fail(rendered: dict[str, Render]) -> None:
    notes = rendered["defaults"].notes
    assert "kubectl label namespace <namespace> imagelock.dev/inject=enabled" in notes
    assert "WARNING: failurePolicy is Fail with one replica" in notes
    assert "WARNING" not in rendered["ha"].notes
