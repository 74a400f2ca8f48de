"""`box serve` under concurrent clients on real microVMs: 40 clients sending execs over
two boxes at once all succeed (the shared guest connection of a box is opened once,
never replaced under the requests using it), and the API keeps answering meanwhile."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import BoxCli, boxfile

pytestmark = pytest.mark.vm

BODY = """project: load
boxes:
  b0:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
  b1:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
"""


@pytest.fixture
def api(box: BoxCli, hello_image: Path, tmp_path: Path) -> Iterator[httpx.Client]:
    f = boxfile(tmp_path, hello_image, BODY)
    box("apply", "-f", str(f), check=True)
    sock = tmp_path / "api.sock"
    proc = subprocess.Popen([sys.executable, "-m", "a3s_box.cli", "serve", "--socket", str(sock)],
                            env=box.env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not sock.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://box", timeout=120) as c:
        yield c
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    box("delete", "-f", str(f), check=True)


def test_forty_clients_exec_at_once_without_an_error(api: httpx.Client) -> None:
    def client(i: int) -> list[str]:
        out = []
        for j in range(5):
            r = api.post(f"/v1/boxes/b{(i + j) % 2}/exec", json={"argv": ["sh", "-c", f"echo {i}-{j}"]})
            out.append(f"{r.status_code} {r.json().get('stdout', r.json().get('detail'))!r}")
        return out

    with ThreadPoolExecutor(40) as ex:
        results = [line for lines in ex.map(client, range(40)) for line in lines]
    statuses = Counter(line.split()[0] for line in results)
    assert statuses == Counter({"200": 200}), [r for r in results if not r.startswith("200")][:5]
    assert sorted(results) == sorted(f"200 '{i}-{j}\\n'" for i in range(40) for j in range(5))
    assert api.get("/healthz").status_code == 200
