"""The TypeScript SDK end to end: its node test suite (sdk/typescript/test/, node's own
runner) against a real `box serve` on TCP and real VMs. This test builds the package
(npm ci from the committed lock file, tsc), serves a fresh home and runs `node --test`."""
from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT, BoxCli, boxfile
from tests.served import served

pytestmark = pytest.mark.vm
SDK = ROOT / "sdk" / "typescript"

BOXFILE = """project: sdk
boxes:
  sdk:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
  worker:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
pools:
  warm: {box: worker, min_ready: 1, max: 2}
"""


@pytest.fixture(scope="module")
def built_sdk() -> Path:
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is missing: scripts/setup.sh --test installs nodejs and npm")
    stamp = SDK / "node_modules" / ".a3s-lock"
    lock = (SDK / "package-lock.json").read_text()
    if not stamp.exists() or stamp.read_text() != lock:
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=SDK, check=True, capture_output=True, timeout=600)
        stamp.write_text(lock)
    subprocess.run([npm, "run", "build"], cwd=SDK, check=True, capture_output=True, timeout=300)
    return SDK


@pytest.fixture(scope="module")
def server(box: BoxCli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    log = tmp_path_factory.mktemp("serve") / "stderr"
    with served(box.env, log) as url:
        yield url, box("serve", "--print-token", check=True).out.strip()
    assert b"Traceback" not in log.read_bytes(), log.read_text(errors="replace")


def test_the_typescript_sdk_against_a_real_server(built_sdk: Path, server: tuple[str, str], box: BoxCli,
                                                 hello_image: Path, tmp_path: Path) -> None:
    url, token = server
    f = boxfile(tmp_path, hello_image, BOXFILE)
    env = {**os.environ, "A3S_BOX_API_URL": url, "A3S_BOX_API_TOKEN": token, "A3S_BOX_TEST_BOXFILE": str(f)}
    r = subprocess.run(["node", "--test", "test/"], cwd=built_sdk, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert "# fail 0" in r.stdout
    # the work the SDK did moved the server's metrics
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", headers={"authorization": f"Bearer {token}"}).text
    samples = {s.name: s.value for fam in text_string_to_metric_families(text) for s in fam.samples
               if not s.labels or s.name.endswith(("_count", "_total"))}
    assert samples.get("a3s_box_execs_total", 0) >= 5
    assert samples.get("a3s_box_box_start_seconds_count", 0) >= 1
    box("delete", "-f", str(f), check=True)


def test_the_sdks_types_are_generated_from_the_committed_openapi(built_sdk: Path, tmp_path: Path) -> None:
    out = tmp_path / "schema.d.ts"
    subprocess.run([str(built_sdk / "node_modules" / ".bin" / "openapi-typescript"),
                    str(ROOT / "schema" / "openapi.json"), "-o", str(out)], cwd=built_sdk, check=True,
                   capture_output=True, timeout=120)
    assert out.read_text() == (built_sdk / "src" / "schema.d.ts").read_text(), \
        "stale: run `npm run gen` in sdk/typescript"
