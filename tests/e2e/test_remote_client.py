"""a3s_box.Client and AsyncClient on real microVMs through a real `box serve` on TCP:
apply, run with exit codes and separate streams, files in and out (bytes and tar),
an interactive process over the WebSocket (stdin in, output as it comes, its exit),
a pool's box acquired and released by a context manager, the audit log's events."""
from __future__ import annotations

import asyncio
import io
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from a3s_box import AsyncClient, Client
from a3s_box.client import ApiError
from tests.e2e.conftest import BoxCli
from tests.served import served

pytestmark = pytest.mark.vm

BODY = """project: remote
boxes:
  coder:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
  worker:
    image: hello
    namespaces: {agent: {command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
pools:
  warm: {box: worker, min_ready: 1, max: 2}
"""


@pytest.fixture
def server(box: BoxCli, tmp_path: Path) -> Iterator[tuple[str, str]]:
    with served(box.env, tmp_path / "serve.log") as url:
        yield url, box("serve", "--print-token", check=True).out.strip()


def test_the_remote_client_drives_boxes(server: tuple[str, str], box: BoxCli, hello_image: Path,
                                        tmp_path: Path) -> None:
    url, token = server
    boxfile = f"apiVersion: box.a3s.dev/v1\nimages:\n  hello: {{path: {hello_image}}}\n{BODY}"
    with Client(url, token) as c:
        assert c.plan(boxfile, path=str(tmp_path / "Boxfile.yaml")).changes > 0
        applied = c.apply(boxfile, path=str(tmp_path / "Boxfile.yaml"))
        assert applied.ok, applied.plan
        coder = c.box("coder")
        r = coder.run(["sh", "-c", "echo out; echo err >&2; exit 3"])
        assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
        assert coder.run(["cat"], stdin="fed\n").stdout == "fed\n"

        coder.files.write("/tmp/a.txt", "hello\n")
        assert coder.files.read("/tmp/a.txt") == b"hello\n"
        assert "a.txt" in [e.name for e in coder.files.list("/tmp")]
        with tarfile.open(fileobj=io.BytesIO(coder.files.download_tar("/tmp/a.txt"))) as t:
            assert [m.name for m in t.getmembers()] == ["a.txt"]
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            data = b"from a tar\n"
            info = tarfile.TarInfo("b.txt")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        coder.files.upload_tar("/tmp", buf.getvalue())
        assert coder.files.read("/tmp/b.txt") == b"from a tar\n"
        coder.files.remove("/tmp/a.txt")
        with pytest.raises(ApiError):
            coder.files.read("/tmp/a.txt")

        p = coder.spawn(["sh", "-c", "read line; echo got $line; echo oops >&2; exit 7"])
        p.write("typed\n")
        ex, out, err = p.wait()
        assert (ex.kind, ex.code, out, err) == ("exited", 7, b"got typed\n", b"oops\n")
        killed = coder.spawn(["sleep", "1000"])
        killed.kill(9)
        assert killed.wait()[0].signal == 9

        with c.acquire("warm", name="job", timeout=120) as job:
            assert job.run(["hostname"]).stdout == "worker\n"
            assert "job" in [b.name for b in c.boxes()]
        assert "job" not in [b.name for b in c.boxes()]  # released: destroyed
        whats = [e["what"] for e in c.events(follow=False, since=0)]
        assert "apply" in whats and "acquire" in whats and "release" in whats

    async def remote() -> None:
        async with AsyncClient(url, token) as ac:
            coder = await ac.box("coder")
            assert (await coder.run(["echo", "async"])).stdout == "async\n"
            p = await coder.spawn(["cat"])
            await p.write("echoed\n")
            await p.end()
            ex, out, _ = await p.wait()
            assert (ex.code, out) == (0, b"echoed\n")
            async with await ac.acquire("warm", timeout=120) as job:
                assert (await job.run(["hostname"])).stdout == "worker\n"
    asyncio.run(remote())
    (tmp_path / "Boxfile.yaml").write_text(boxfile)
    box("delete", "-f", str(tmp_path / "Boxfile.yaml"), check=True)
    assert box.vm_processes() == []
