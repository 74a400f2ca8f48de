"""The TypeScript package as a user gets it: `npm pack` in a fresh clone (no
node_modules, no dist/) makes a tarball with the compiled code and its types; installed
into an empty folder, a plain Node script imports it and talks to a real `box serve`,
and a TypeScript file using it type-checks. `npm install` of the clone's folder works too.

No VM: the server is asked to validate a Boxfile and list boxes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT

SCRIPT = """\
import { Host, ApiError } from "a3s-box";
const host = new Host({ socket: process.argv[2] });
const v = await host.validate("apiVersion: box.a3s.dev/v1\\nboxes: {a: {image: 'x:1'}}\\n");
const boxes = await host.boxes();
let problem = null;
try { await host.validate("boxes: 1\\n"); } catch (e) { problem = e instanceof ApiError ? e.status : String(e); }
console.log(JSON.stringify({ boxes: v.boxes, listed: boxes.length, problem }));
"""

TYPED = """\
import { Host, type BoxInfo } from "a3s-box";
const host: Host = new Host({ url: "http://127.0.0.1:1", token: "t" });
const names = async (): Promise<string[]> => (await host.boxes()).map((b: BoxInfo) => b.name);
void names;
"""


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: scripts/setup.sh --test installs nodejs and npm")
    return npm


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(cmd)} in {cwd}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("clone") / "a3s-box"
    _run(["git", "clone", "-q", str(ROOT), str(dest)], cwd=dest.parent)
    sdk = dest / "sdk" / "typescript"
    assert not (sdk / "dist").exists() and not (sdk / "node_modules").exists()
    return sdk


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    sock = home / "api.sock"
    proc = subprocess.Popen([sys.executable, "-m", "a3s_box.cli", "--home", str(home), "serve", "--socket",
                             str(sock)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while not sock.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert sock.exists(), proc.communicate(timeout=5)[0]
    yield sock
    proc.terminate()
    proc.communicate(timeout=20)


def _consumer(root: Path, spec: str) -> Path:
    root.mkdir()
    (root / "package.json").write_text(json.dumps({"name": "consumer", "version": "1.0.0", "type": "module"}))
    _run([_npm(), "install", "--no-audit", "--no-fund", spec], cwd=root)
    (root / "main.mjs").write_text(SCRIPT)
    return root


def test_a_packed_clone_installs_and_imports_in_plain_node(clone: Path, server: Path, tmp_path: Path) -> None:
    tarball = clone / _run([_npm(), "pack", "--silent"], cwd=clone).strip().splitlines()[-1]
    with tarfile.open(tarball) as t:
        names = set(t.getnames())
    assert {"package/dist/index.js", "package/dist/index.d.ts", "package/dist/schema.d.ts"} <= names, names
    app = _consumer(tmp_path / "app", str(tarball))
    out = _run(["node", "main.mjs", str(server)], cwd=app, timeout=60)
    assert json.loads(out) == {"boxes": 1, "listed": 0, "problem": 422}
    # the types resolve for a TypeScript user (the clone's own compiler, strict)
    (app / "main.ts").write_text(TYPED)
    (app / "tsconfig.json").write_text(json.dumps({"compilerOptions": {
        "strict": True, "module": "NodeNext", "moduleResolution": "NodeNext", "target": "ES2022",
        "noEmit": True}, "files": ["main.ts"]}))
    _run(["node", str(clone / "node_modules/typescript/bin/tsc"), "-p", "tsconfig.json"], cwd=app)


def test_installing_the_clones_folder_builds_it(clone: Path, server: Path, tmp_path: Path) -> None:
    shutil.rmtree(clone / "dist", ignore_errors=True)
    app = _consumer(tmp_path / "app", str(clone))
    out = _run(["node", "main.mjs", str(server)], cwd=app, timeout=60)
    assert json.loads(out)["problem"] == 422
    assert os.path.exists(clone / "dist" / "index.js")
