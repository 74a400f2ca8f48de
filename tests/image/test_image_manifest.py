"""Pure parts: manifests, platform choice, auth challenge and credentials, HTTP scheme."""
from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from a3s_box.errors import ImageError
from a3s_box.image import parse_reference
from a3s_box.image.auth import credentials, parse_challenge
from a3s_box.image.manifest import (
    DOCKER_LIST,
    OCI_MANIFEST,
    Descriptor,
    Index,
    Manifest,
    choose_platform,
    parse_config,
    parse_manifest,
)
from a3s_box.image.registry import RegistryClient

D = {c: "sha256:" + c * 64 for c in "abcdef"}


def desc(d: str, **plat: str) -> dict[str, object]:
    return {"mediaType": OCI_MANIFEST, "digest": d, "size": 10, "platform": plat}


def test_index_platform_choice() -> None:
    raw = json.dumps({"mediaType": DOCKER_LIST, "manifests": [
        desc(D["a"], os="linux", architecture="arm", variant="v7"),
        desc(D["b"], os="linux", architecture="arm64", variant="v8"),
        desc(D["c"], os="linux", architecture="amd64"),
        desc(D["d"], os="windows", architecture="amd64")]}).encode()
    idx = parse_manifest(raw, "r")
    assert isinstance(idx, Index)
    assert choose_platform(idx, "r", ("linux", "amd64")).digest == D["c"]
    assert choose_platform(idx, "r", ("linux", "arm64")).digest == D["b"]
    with pytest.raises(ImageError, match=r"no image for linux/riscv64 \(index has linux/amd64, "
                                         r"linux/arm, linux/arm64, windows/amd64\)"):
        choose_platform(idx, "r", ("linux", "riscv64"))


def test_manifest_shapes_and_errors() -> None:
    m = parse_manifest(json.dumps({"schemaVersion": 2, "config": {"digest": D["a"], "size": 3},
                                   "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                               "digest": D["b"], "size": 4}]}).encode(), "r")
    assert m == Manifest(Descriptor("", D["a"], 3),
                         (Descriptor("application/vnd.oci.image.layer.v1.tar", D["b"], 4),))
    for raw, msg in [
        (b"{", "manifest is not valid JSON"),
        (b"[]", "manifest must be a JSON object"),
        (json.dumps({"mediaType": OCI_MANIFEST, "config": {"digest": "md5:x", "size": 1},
                     "layers": []}).encode(), "bad descriptor"),
        (json.dumps({"mediaType": OCI_MANIFEST, "config": {"digest": D["a"], "size": 1},
                     "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd",
                                 "digest": D["b"], "size": 1}]}).encode(),
         "unsupported media type 'application/vnd.oci.image.layer.v1.tar+zstd'"),
        (json.dumps({"schemaVersion": 1}).encode(), "unsupported manifest media type ''"),
    ]:
        with pytest.raises(ImageError, match="^image r: ") as e:
            parse_manifest(raw, "r")
        assert msg in str(e.value)


def test_config() -> None:
    cfg, diff_ids = parse_config(json.dumps({"config": {
        "Env": ["A=1"], "Entrypoint": None, "Cmd": ["sh"], "Labels": None},
        "rootfs": {"diff_ids": [D["a"]]}}).encode(), "r")
    assert (cfg.argv, cfg.env, cfg.labels, diff_ids) == (["sh"], ("A=1",), {}, (D["a"],))


def test_challenge() -> None:
    ch = parse_challenge('Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                         'scope="repository:library/busybox:pull"')
    assert ch is not None and ch.scheme == "bearer"
    assert ch.params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                         "scope": "repository:library/busybox:pull"}
    basic = parse_challenge('Basic realm="basic-realm"')
    assert basic is not None and basic.scheme == "basic"


def test_credentials(tmp_path: Path) -> None:
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"auths": {
        "https://index.docker.io/v1/": {"auth": base64.b64encode(b"hub:pw:with:colons").decode()},
        "ghcr.io": {"username": "u", "password": "p"}}}))
    assert credentials("docker.io", cfg) == ("hub", "pw:with:colons")
    assert credentials("ghcr.io", cfg) == ("u", "p")
    assert credentials("quay.io", cfg) is None
    assert credentials("quay.io", tmp_path / "missing.json") is None


@pytest.mark.parametrize(("ref", "insecure", "base"), [
    ("127.0.0.1:5000/a", frozenset(), "http://127.0.0.1:5000/v2/a"),
    ("localhost:5000/a", frozenset(), "http://localhost:5000/v2/a"),
    ("[::1]:5000/a", frozenset(), "http://[::1]:5000/v2/a"),
    ("10.0.0.5:5000/a", frozenset(), "https://10.0.0.5:5000/v2/a"),
    ("10.0.0.5:5000/a", frozenset({"10.0.0.5:5000"}), "http://10.0.0.5:5000/v2/a"),
    ("busybox", frozenset(), "https://registry-1.docker.io/v2/library/busybox"),
])
def test_plain_http_only_for_loopback_or_listed(ref: str, insecure: frozenset[str], base: str) -> None:
    with RegistryClient(parse_reference(ref), insecure=insecure) as c:
        assert c.base == base
