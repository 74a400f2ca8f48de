"""The demo image plus the host's own curl (and the shared libraries, loader and NSS
modules it needs), so that tests can make real HTTP(S) requests from inside a box.
busybox's wget cannot: Debian's busybox-static resolves names through glibc's NSS,
which a static binary cannot load, and it crashes on any URL."""
from __future__ import annotations

import importlib.util
import subprocess
import tarfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ("/usr/bin/curl",)
NSS = ("libnss_files.so.2", "libnss_dns.so.2", "libresolv.so.2")


def _make_image_module() -> Any:
    spec = importlib.util.spec_from_file_location("make_image", ROOT / "examples/hello/make_image.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _libraries(binary: str) -> set[Path]:
    out = subprocess.run(["ldd", binary], check=True, capture_output=True, text=True).stdout
    libs = set()
    for line in out.splitlines():
        parts = line.split()
        path = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if path.startswith("/"):
            libs.add(Path(path))
    return libs


def build_tools_image(out: Path, tools: tuple[str, ...] = TOOLS) -> Path:
    """TOOLS: host binaries to add, with what they need (the E2B tests add bash)."""
    mi = _make_image_module()
    files: set[Path] = {Path(t) for t in tools}
    for t in tools:
        files |= _libraries(t)
    libdir = next(p.parent for p in files if p.name.startswith("libc.so"))
    files |= {libdir / n for n in NSS if (libdir / n).exists()}

    def tools_layer(tar: tarfile.TarFile) -> None:
        made: set[str] = set()
        for f in sorted(files):
            parts = f.parts[1:]
            for i in range(1, len(parts)):
                d = "/".join(parts[:i])
                if d not in made and d not in ("bin", "etc", "usr", "usr/bin"):
                    mi._entry(tar, d, kind=tarfile.DIRTYPE)
                    made.add(d)
            mi._entry(tar, "/".join(parts), data=f.resolve().read_bytes(), mode=0o755)
        mi._entry(tar, "etc/nsswitch.conf", data=b"hosts: files dns\n", mode=0o644)
        for d in ("etc/ssl", "etc/ssl/certs"):
            mi._entry(tar, d, kind=tarfile.DIRTYPE)
        mi._entry(tar, "etc/ssl/certs/ca-certificates.crt",
                  data=b"# the image's own trust store (empty in this test image)\n", mode=0o644)

    mi.build(out, extra_layers=(tools_layer,))
    return out
