#!/usr/bin/env python3
"""Push small synthetic images to a local registry over plain HTTP, for the demo.

Usage:
  seed-images.py HOST REPO:TAG[,TAG...] [--platforms linux/amd64,linux/arm64] [--layers N]
                 [--seed S] [--layer-size BYTES]

Each call pushes one image (an OCI index when more than one platform is given) and points
every listed tag at it. Prints the manifest digest. Standard library only, so the demo runs
on a fresh machine.
"""

import argparse
import hashlib
import json
import os
import sys
import urllib.parse
import urllib.request

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def request(method, url, data=None, headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.headers, resp.read()


def push_blob(host, repo, data):
    d = digest(data)
    base = f"http://{host}/v2/{repo}/blobs"
    try:
        request("HEAD", f"{base}/{d}")
        return d
    except urllib.error.HTTPError:
        pass
    _, headers, _ = request("POST", f"{base}/uploads/")
    location = urllib.parse.urljoin(f"http://{host}", headers["Location"])
    sep = "&" if "?" in location else "?"
    request(
        "PUT",
        f"{location}{sep}digest={urllib.parse.quote(d)}",
        data=data,
        headers={"Content-Type": "application/octet-stream"},
    )
    return d


def push_manifest(host, repo, reference, body, media_type):
    request(
        "PUT",
        f"http://{host}/v2/{repo}/manifests/{reference}",
        data=body,
        headers={"Content-Type": media_type},
    )
    return digest(body)


def layer_bytes(seed, platform, index, size):
    """Same seed, same bytes, same digests (the example repo names a digest). With a size,
    incompressible bytes of that size (random: for benchmarks)."""
    if size:
        return os.urandom(size)
    return hashlib.sha256(f"{seed}-{platform}-{index}".encode()).digest() * 64


def image(host, repo, platform, layers, seed, layer_size=0):
    os_name, arch, *variant = platform.split("/")
    layer_descs = []
    for i in range(layers):
        data = layer_bytes(seed, platform, i, layer_size)
        layer_descs.append(
            {"mediaType": OCI_LAYER, "digest": push_blob(host, repo, data), "size": len(data)}
        )
    config = {
        "architecture": arch,
        "os": os_name,
        "rootfs": {"type": "layers", "diff_ids": [d["digest"] for d in layer_descs]},
        "config": {"Labels": {"seed": seed}},
    }
    if variant:
        config["variant"] = variant[0]
    config_bytes = json.dumps(config, sort_keys=True).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": OCI_CONFIG,
            "digest": push_blob(host, repo, config_bytes),
            "size": len(config_bytes),
        },
        "layers": layer_descs,
    }
    return json.dumps(manifest, sort_keys=True).encode()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("host")
    parser.add_argument("target", help="REPO:TAG[,TAG...]")
    parser.add_argument("--platforms", default="linux/amd64")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--seed", default="")
    parser.add_argument("--layer-size", type=int, default=0, help="random layers of this many bytes")
    args = parser.parse_args()

    repo, _, tags = args.target.rpartition(":")
    tags = tags.split(",")
    seed = args.seed or os.urandom(8).hex()
    platforms = args.platforms.split(",")
    if len(platforms) == 1:
        body = image(args.host, repo, platforms[0], args.layers, seed, args.layer_size)
        media_type = OCI_MANIFEST
    else:
        children = []
        for platform in platforms:
            child = image(args.host, repo, platform, args.layers, seed, args.layer_size)
            child_digest = push_manifest(args.host, repo, digest(child), child, OCI_MANIFEST)
            os_name, arch, *variant = platform.split("/")
            entry = {"os": os_name, "architecture": arch}
            if variant:
                entry["variant"] = variant[0]
            children.append(
                {"mediaType": OCI_MANIFEST, "digest": child_digest, "size": len(child), "platform": entry}
            )
        body = json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}, sort_keys=True
        ).encode()
        media_type = OCI_INDEX
    for tag in tags:
        push_manifest(args.host, repo, tag, body, media_type)
    print(digest(body))


if __name__ == "__main__":
    try:
        main()
    except urllib.error.URLError as e:
        sys.exit(f"seed-images: {e}")
