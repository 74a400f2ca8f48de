from __future__ import annotations

import pytest

from a3s_box.errors import ImageError
from a3s_box.image import parse_reference

D = "sha256:" + "a" * 64


@pytest.mark.parametrize(("ref", "canonical", "registry", "repository", "tag", "digest"), [
    ("busybox", "docker.io/library/busybox:latest", "docker.io", "library/busybox", "latest", None),
    ("busybox:1.36", "docker.io/library/busybox:1.36", "docker.io", "library/busybox", "1.36", None),
    ("org/app", "docker.io/org/app:latest", "docker.io", "org/app", "latest", None),
    ("index.docker.io/library/x", "docker.io/library/x:latest", "docker.io", "library/x", "latest", None),
    ("127.0.0.1:5000/a/b:v1", "127.0.0.1:5000/a/b:v1", "127.0.0.1:5000", "a/b", "v1", None),
    ("localhost/x", "localhost/x:latest", "localhost", "x", "latest", None),
    (f"ghcr.io/o/r@{D}", f"ghcr.io/o/r@{D}", "ghcr.io", "o/r", None, D),
    (f"ghcr.io/o/r:t@{D}", f"ghcr.io/o/r:t@{D}", "ghcr.io", "o/r", "t", D),
    (f"busybox@{D}", f"docker.io/library/busybox@{D}", "docker.io", "library/busybox", None, D),
])
def test_parse(ref: str, canonical: str, registry: str, repository: str, tag: str | None,
               digest: str | None) -> None:
    r = parse_reference(ref)
    assert (str(r), r.registry, r.repository, r.tag, r.digest) == (
        canonical, registry, repository, tag, digest)
    assert parse_reference(str(r)) == r  # canonical form is a fixed point


def test_docker_hub_api_host() -> None:
    assert parse_reference("busybox").api_host == "registry-1.docker.io"


@pytest.mark.parametrize(("ref", "why"), [
    ("", "empty"),
    ("Busybox", "'Busybox' must be lowercase"),
    ("a//b", "component '' must be lowercase"),
    ("x@sha256:1234", "digest must be sha256"),
    ("x:bad tag", "tag 'bad tag' is not valid"),
    ("host:5000/", "no repository"),
])
def test_bad_reference_names_it(ref: str, why: str) -> None:
    with pytest.raises(ImageError) as e:
        parse_reference(ref)
    assert e.value.ref == ref
    assert why in str(e.value)
