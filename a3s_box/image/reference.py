"""Image references: parse what people type into one canonical form (pure).

    busybox                 -> docker.io/library/busybox:latest
    127.0.0.1:5000/a/b      -> 127.0.0.1:5000/a/b:latest
    host/repo@sha256:...    -> host/repo@sha256:...   (no tag implied when a digest is given)
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from a3s_box.errors import ImageError

DOCKER_HUB = "docker.io"
_DOCKER_HUB_API = "registry-1.docker.io"
_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_HOST = re.compile(r"(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9a-fA-F:]+\])(?::[0-9]+)?")


@dataclass(frozen=True)
class Reference:
    registry: str  # "docker.io", "127.0.0.1:5000"
    repository: str  # "library/busybox"
    tag: str | None
    digest: str | None  # "sha256:..."

    def __str__(self) -> str:
        s = f"{self.registry}/{self.repository}"
        if self.tag:
            s += f":{self.tag}"
        if self.digest:
            s += f"@{self.digest}"
        return s

    @property
    def api_host(self) -> str:
        """Where the distribution API answers (Docker Hub's differs from its name)."""
        return _DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def reference(self) -> str:
        """What goes after /manifests/: the digest when pinned, else the tag."""
        return self.digest or self.tag or "latest"

    def with_digest(self, digest: str) -> "Reference":
        return Reference(self.registry, self.repository, self.tag, digest)


def is_digest(s: str) -> bool:
    return _DIGEST.fullmatch(s) is not None


def parse_reference(ref: str) -> Reference:
    """Parse and normalise REF; ImageError naming REF when it is not a valid reference."""
    def bad(why: str) -> ImageError:
        return ImageError(ref, f"invalid image reference: {why}")

    if not ref or ref != ref.strip():
        raise bad("empty or surrounded by spaces")
    name, digest = ref, None
    if "@" in ref:
        name, digest = ref.split("@", 1)
        if not _DIGEST.fullmatch(digest):
            raise bad("digest must be sha256: and 64 lowercase hex digits")
    first, sep, rest = name.partition("/")
    # Docker's rule: the first component is a registry host when it looks like one.
    if sep and ("." in first or ":" in first or first == "localhost"):
        registry, path = first, rest
        if not _HOST.fullmatch(registry):
            raise bad(f"registry host {registry!r} is not valid")
    else:
        registry, path = DOCKER_HUB, name
    tag = None
    last = path.rsplit("/", 1)[-1]
    if ":" in last:
        path, tag = path.rsplit(":", 1)
        if not _TAG.fullmatch(tag):
            raise bad(f"tag {tag!r} is not valid")
    if not path:
        raise bad("no repository")
    for comp in path.split("/"):
        if not _COMPONENT.fullmatch(comp):
            raise bad(f"repository component {comp!r} must be lowercase letters, digits and separators")
    if registry == DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    if registry in ("index.docker.io", _DOCKER_HUB_API):
        registry = DOCKER_HUB
    if tag is None and digest is None:
        tag = "latest"
    return Reference(registry, path, tag, digest)
