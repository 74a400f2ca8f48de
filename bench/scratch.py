"""A throwaway a3s-box home for a benchmark run: the demo image built offline, the guest
kernel and init shared with the tests' cache (fetched and built once), and a `box` runner
that times each command."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("A3S_BOX_TEST_HOME", Path.home() / ".cache/a3s-box-test")).absolute()


class Scratch:
    def __enter__(self) -> "Scratch":
        self._tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self._tmp.name)
        self.home = self.dir / "home"
        self.home.mkdir()
        (SHARED / "cache").mkdir(parents=True, exist_ok=True)
        (self.home / "cache").symlink_to(SHARED / "cache")
        self.image = self.dir / "image"
        subprocess.run([sys.executable, str(ROOT / "examples/hello/make_image.py"), str(self.image)],
                       check=True, stdout=subprocess.DEVNULL)
        # As on a user's machine, Python may cache bytecode (this workplace sets
        # PYTHONDONTWRITEBYTECODE, which makes every `box` recompile its modules).
        self.env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        self.env["A3S_BOX_HOME"] = str(self.home)
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self._tmp.cleanup()

    def box(self, *args: str) -> float:
        """Run `box ARGS` to completion; its wall-clock seconds."""
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "a3s_box.cli", *args], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return time.perf_counter() - t0

    def boxfile(self, name: str, body: str) -> Path:
        path = self.dir / name
        path.write_text(f"apiVersion: box.a3s.dev/v1\nimages:\n  hello: {{path: {self.image}}}\n{body}")
        return path
