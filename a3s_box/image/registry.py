"""The distribution API v2 client: manifests and blobs, auth, retries, resumable downloads.

This is the edge where httpx errors and HTTP statuses become RegistryError (raised
from the original). Retried with exponential backoff: 5xx, 429 and dropped
connections. Blob downloads resume from the partial file with a Range request; a
download that finds the disk full removes its partial file (kept, it would keep the
disk full) and lets the OSError through for the store to say which disk and how much.
Plain HTTP only for loopback registries or those listed in A3S_BOX_INSECURE_REGISTRIES
(comma-separated host[:port]), as Docker does.
"""
from __future__ import annotations

import base64
import fcntl
import ipaddress
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from a3s_box.disks.space import is_full
from a3s_box.version import __version__
from a3s_box.errors import RegistryError
from a3s_box.image.auth import credentials, parse_challenge
from a3s_box.image.blobs import BlobStore, sha256_bytes, sha256_file
from a3s_box.image.manifest import ACCEPT, Descriptor
from a3s_box.image.reference import Reference

Progress = Callable[[int], None]
_RETRY_STATUS = {429, 500, 502, 503, 504}


def insecure_from_env() -> frozenset[str]:
    raw = os.environ.get("A3S_BOX_INSECURE_REGISTRIES", "")
    return frozenset(h.strip() for h in raw.split(",") if h.strip())


def is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class RegistryClient:
    def __init__(self, ref: Reference, *, insecure: frozenset[str] = frozenset(),
                 retries: int = 5, backoff: float = 0.2,
                 sleep: Callable[[float], None] = time.sleep,
                 docker_config: Path | None = None, timeout: float = 60.0) -> None:
        self.ref = ref
        self.name = str(ref)
        host = ref.api_host
        plain = is_loopback(host) or host in insecure or ref.registry in insecure
        self.base = f"{'http' if plain else 'https'}://{host}/v2/{ref.repository}"
        self.retries = retries
        self.backoff = backoff
        self.sleep = sleep
        self.creds = credentials(ref.registry, docker_config)
        self.auth_header: str | None = None
        self.http = httpx.Client(timeout=timeout, follow_redirects=True,
                                 headers={"User-Agent": f"a3s-box/{__version__}"},
                                 limits=httpx.Limits(max_connections=16))

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- requests -------------------------------------------------------------------
    def _wait(self, attempt: int) -> None:
        self.sleep(min(self.backoff * (2 ** attempt), 10.0))

    def _send(self, url: str, headers: dict[str, str], what: str) -> httpx.Response:
        """A streamed GET, authenticated and retried; the caller closes the response."""
        authed = False
        last: str = ""
        status: int | None = None
        attempt = 0
        while attempt <= self.retries:
            h = dict(headers)
            if self.auth_header:
                h["Authorization"] = self.auth_header
            try:
                resp = self.http.send(self.http.build_request("GET", url, headers=h), stream=True)
            except httpx.TransportError as e:
                last, status = f"{type(e).__name__}: {e}", None
                self._wait(attempt)
                attempt += 1
                continue
            if resp.status_code == 401 and not authed:
                challenge = resp.headers.get("www-authenticate", "")
                resp.close()
                self._authenticate(challenge)
                authed = True
                continue
            if resp.status_code in _RETRY_STATUS:
                last, status = f"HTTP {resp.status_code}", resp.status_code
                resp.close()
                self._wait(attempt)
                attempt += 1
                continue
            if resp.status_code in (200, 206):
                return resp
            resp.read()
            resp.close()
            raise self._status_error(resp, what)
        raise RegistryError(self.name, f"{what}: registry {self.ref.registry} failed after "
                                       f"{self.retries + 1} attempts ({last})", status)

    def _status_error(self, resp: httpx.Response, what: str) -> RegistryError:
        code = resp.status_code
        if code == 404:
            msg = f"{what}: not found in {self.ref.registry} (no such repository, tag or digest)"
        elif code in (401, 403):
            msg = f"{what}: access denied by {self.ref.registry}" + (
                "" if self.creds else " (no credentials for it in ~/.docker/config.json)")
        else:
            msg = f"{what}: registry {self.ref.registry} answered HTTP {code}"
        return RegistryError(self.name, msg, code)

    def _authenticate(self, header: str) -> None:
        ch = parse_challenge(header)
        if ch is None:
            raise RegistryError(self.name, "registry demands authentication without a challenge", 401)
        if ch.scheme == "basic":
            if not self.creds:
                raise RegistryError(self.name, f"registry {self.ref.registry} needs a login "
                                               "(none in ~/.docker/config.json)", 401)
            user, pw = self.creds
            self.auth_header = "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()
            return
        if ch.scheme != "bearer" or "realm" not in ch.params:
            raise RegistryError(self.name, f"unsupported auth challenge {header!r}", 401)
        params = {"scope": ch.params.get("scope") or f"repository:{self.ref.repository}:pull"}
        if "service" in ch.params:
            params["service"] = ch.params["service"]
        try:
            r = self.http.get(ch.params["realm"], params=params,
                              auth=httpx.BasicAuth(*self.creds) if self.creds else None)
        except httpx.TransportError as e:
            raise RegistryError(self.name, f"token service {ch.params['realm']}: {e}") from e
        if r.status_code != 200:
            raise RegistryError(self.name, f"token service refused access (HTTP {r.status_code})",
                                r.status_code)
        try:
            body = r.json()
            token = body.get("token") or body.get("access_token")
        except ValueError as e:
            raise RegistryError(self.name, "token service answered something that is not JSON") from e
        if not token:
            raise RegistryError(self.name, "token service gave no token")
        self.auth_header = f"Bearer {token}"

    # --- API --------------------------------------------------------------------------
    def manifest(self, reference: str) -> tuple[bytes, str, str]:
        """(bytes, content type, digest) of a manifest; verified when `reference` is a digest."""
        what = f"manifest {reference}"
        for attempt in range(self.retries + 1):
            resp = self._send(f"{self.base}/manifests/{reference}", {"Accept": ACCEPT}, what)
            try:
                data = resp.read()
            except httpx.TransportError as e:
                self._wait(attempt)
                if attempt == self.retries:
                    raise RegistryError(self.name, f"{what}: connection dropped: {e}") from e
                continue
            finally:
                resp.close()
            digest = sha256_bytes(data)
            if reference.startswith("sha256:") and digest != reference:
                raise RegistryError(self.name, f"{what}: content does not match the digest (got {digest})")
            return data, resp.headers.get("content-type", ""), digest
        raise AssertionError("unreachable")

    def blob_bytes(self, desc: Descriptor, blobs: BlobStore) -> bytes:
        self.fetch_blob(desc, blobs)
        return blobs.read(desc.digest)

    def fetch_blob(self, desc: Descriptor, blobs: BlobStore, progress: Progress | None = None) -> None:
        """Download a blob into the store, resuming a partial file; verify before keeping it."""
        blobs.tmp.mkdir(parents=True, exist_ok=True)
        blobs.dir.mkdir(parents=True, exist_ok=True)
        part = blobs.partial(desc.digest)
        # One downloader per blob across threads and processes: they share the partial file.
        with open(blobs.lock_path(desc.digest), "a") as lk:
            fcntl.flock(lk, fcntl.LOCK_EX)
            if blobs.has(desc.digest):
                if progress:
                    progress(desc.size)
                return
            self._download(desc, blobs, part, progress)

    def _download(self, desc: Descriptor, blobs: BlobStore, part: Path,
                  progress: Progress | None) -> None:
        what = f"blob {desc.digest[:19]}"
        problem = ""
        for attempt in range(self.retries + 1):
            have = part.stat().st_size if part.exists() else 0
            if have >= desc.size:  # a stale or oversized partial cannot be trusted
                part.unlink(missing_ok=True)
                have = 0
            if progress and attempt == 0 and have:
                progress(have)
            resp = self._send(f"{self.base}/blobs/{desc.digest}",
                              {"Range": f"bytes={have}-"} if have else {}, what)
            try:
                resumed = resp.status_code == 206 and have > 0
                if not resumed and have and progress:
                    progress(-have)
                with open(part, "ab" if resumed else "wb") as f:
                    try:
                        for chunk in resp.iter_bytes():  # unbuffered: keep what arrived before a drop
                            f.write(chunk)
                            if progress:
                                progress(len(chunk))
                    finally:
                        f.flush()
                        os.fsync(f.fileno())  # durable before it can be renamed into place
            except httpx.TransportError as e:
                problem = f"connection dropped: {e}"
                self._wait(attempt)
                continue
            except OSError as e:
                if is_full(e):
                    part.unlink(missing_ok=True)
                raise
            finally:
                resp.close()
            size = part.stat().st_size
            if size < desc.size:
                problem = f"truncated download ({size} of {desc.size} bytes)"
                self._wait(attempt)
                continue
            blobs.commit(part, sha256_file(part) if size == desc.size else f"size {size}",
                         desc.digest, self.name)
            return
        raise RegistryError(self.name, f"{what}: {problem} after {self.retries + 1} attempts")
