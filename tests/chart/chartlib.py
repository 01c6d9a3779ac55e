"""Helpers of the chart tests: value sets, renders parsed into objects, a fake API server for `lookup`.

The chart is rendered by the real Helm v4 engine (helm-python-sdk) and every object is checked
against the Kubernetes OpenAPI schemas (kubernetes-validate). Nothing here needs a cluster:
the one test of `lookup` talks to a fake API server on 127.0.0.1.
"""

from __future__ import annotations

import copy
import http.server
import json
import threading
from pathlib import Path
from typing import Any

import yaml

CHART_DIR = Path(__file__).resolve().parents[2] / "charts" / "imagelock"
RELEASE = "imagelock"
# Not "imagelock", so that a test sees it if a template hard-codes the namespace.
NAMESPACE = "platform-images"
REPO = "https://git.example.com/platform/images.git"

# A fake but well-formed CA, for tls.mode=existingSecret (only its base64 form is checked).
FAKE_CA_B64 = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="

# The value sets every object of which is linted and schema-checked; `config.repo` is added
# to each. Tests pick a set by name.
VALUE_SETS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cert-manager": {"tls": {"mode": "certManager"}},
    "cert-manager-issuer": {
        "tls": {
            "mode": "certManager",
            "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}},
        }
    },
    "existing-secrets": {
        "git": {
            "auth": "token",
            "existingSecret": "corp-git",
            "secretKeys": {"token": "password"},
        },
        "registry": {"existingSecret": "corp-registry"},
        "hooks": {"existingSecret": "corp-hooks", "secretKey": "shared"},
        "tls": {"mode": "existingSecret", "existingSecret": "corp-webhook-tls", "caBundle": FAKE_CA_B64},
    },
    "chart-secrets-ssh": {
        "config": {"repo": "git@git.example.com:platform/images.git"},
        "git": {
            "auth": "ssh",
            "ssh": {
                "privateKey": "-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n-----END OPENSSH PRIVATE KEY-----\n",
                "passphrase": "hunter2",
                "knownHosts": "git.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeFakeFake",
            },
        },
        "registry": {
            "auths": {
                "quay.io": {"username": "company+imagelock", "password": "s3cret"},
                "internal-robot": {"username": "robot", "password": "pw"},
            }
        },
        "hooks": {"secret": "from-values"},
    },
    "ha": {"replicaCount": 3},
    "monitoring-networkpolicy": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
        "networkPolicy": {
            "enabled": True,
            "hooksFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
            ],
            "adminFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
            ],
            "egress": [{"ports": [{"port": 443, "protocol": "TCP"}, {"port": 22, "protocol": "TCP"}]}],
        },
        "hooks": {
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "host": "imagelock-hooks.example.com",
                "tls": [{"secretName": "imagelock-hooks-tls", "hosts": ["imagelock-hooks.example.com"]}],
            }
        },
    },
    "webhook-and-hooks-off": {"webhook": {"enabled": False}, "hooks": {"enabled": False}},
}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def values_for(name: str, **override: Any) -> dict[str, Any]:
    """The value set `name`, with a repo and any overrides."""
    return deep_merge(deep_merge({"config": {"repo": REPO}}, VALUE_SETS[name]), override)


def parse(manifests: dict[str, str]) -> list[dict[str, Any]]:
    """Every object of a render, in template order; NOTES.txt and empty documents left out."""
    objects = []
    for path in sorted(manifests):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(manifests[path]):
            if doc:
                objects.append(doc)
    return objects


class Render:
    """The objects of one render, with lookups by kind and name."""

    def __init__(self, manifests: dict[str, str]):
        self.manifests = manifests
        self.objects = parse(manifests)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [o for o in self.objects if o["kind"] == kind]

    def one(self, kind: str, name: str | None = None) -> dict[str, Any]:
        found = [o for o in self.of_kind(kind) if name is None or o["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind} {name or ''}, found {[o['metadata']['name'] for o in found]}"
        return found[0]

    @property
    def deployment(self) -> dict[str, Any]:
        return self.one("Deployment")

    @property
    def pod_spec(self) -> dict[str, Any]:
        return self.deployment["spec"]["template"]["spec"]

    @property
    def container(self) -> dict[str, Any]:
        (container,) = self.pod_spec["containers"]
        return container

    @property
    def daemon_config(self) -> dict[str, Any]:
        """The daemon's config file, as the daemon would read it."""
        return yaml.safe_load(self.one("ConfigMap")["data"]["config.yaml"])

    @property
    def webhook(self) -> dict[str, Any]:
        (hook,) = self.one("MutatingWebhookConfiguration")["webhooks"]
        return hook

    @property
    def notes(self) -> str:
        return next(v for k, v in self.manifests.items() if k.endswith("NOTES.txt"))


class FakeApiServer:
    """Just enough of the Kubernetes API for Helm's `lookup`: discovery of the core group and GET
    of the objects it was given. Everything else is a 404 Status."""

    def __init__(self, objects: list[dict[str, Any]]):
        self.objects = {
            f"/api/v1/namespaces/{o['metadata']['namespace']}/{o['kind'].lower()}s/{o['metadata']['name']}": o
            for o in objects
        }
        self.requests: list[str] = []
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.requests.append(self.path)
                path = self.path.split("?")[0]
                body = server.answer(path)
                status = 200 if body is not None else 404
                if body is None:
                    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def answer(self, path: str) -> dict[str, Any] | None:
        if path == "/version":
            return {"major": "1", "minor": "34", "gitVersion": "v1.34.0"}
        if path == "/api":
            return {"kind": "APIVersions", "versions": ["v1"]}
        if path == "/apis":
            return {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
        if path == "/api/v1":
            return {
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": [
                    {"name": "secrets", "singularName": "secret", "namespaced": True, "kind": "Secret", "verbs": ["get"]}
                ],
            }
        return self.objects.get(path)

    @property
    def kubeconfig(self) -> str:
        host, port = self.httpd.server_address[:2]
        return yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "fake", "cluster": {"server": f"http://{host}:{port}"}}],
                "users": [{"name": "fake", "user": {"token": "fake"}}],
                "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
                "current-context": "fake",
            }
        )

    def __enter__(self) -> "FakeApiServer":
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
