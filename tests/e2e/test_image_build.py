"""Image builds through the `box` CLI on real VMs: a multi-stage Dockerfile whose RUN
steps (each in a microVM) make a program that COPY --from puts into a small final
stage; a box from the result runs it, its agent command from the image's labels. A
rebuild with nothing changed runs no step; changing one RUN reruns it and what follows;
a RUN that deletes a lower layer's file leaves a whiteout (that RUN a heredoc script run
by its #! line, beside a COPY <<EOF); what a RUN leaves in /tmp stays for the next step; a RUN writing to a host path
changes nothing on the host; the build's network policy holds; skopeo and umoci read
the exported image and unpack the same root file system."""
from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import BoxCli
from tests.network.conftest import Internet, internet  # noqa: F401 - the fixture
from tests.network.tools_image import build_tools_image

pytestmark = pytest.mark.vm
BASE = "localhost/a3s-test/hello:1"
DOCKERFILE = """\
# a build stage makes the program; the final stage only gets the program
ARG BASE={base}
FROM ${{BASE}} AS build
ARG WHO
WORKDIR /src
COPY hello.sh .
RUN mkdir -p /out && sed "s/@WHO@/$WHO/" hello.sh > /out/hello && chmod 755 /out/hello && echo kept > /tmp/staged
RUN test -s /tmp/staged && echo {marker} > /out/marker

FROM ${{BASE}}
ARG WHO
RUN <<EOF
#!/bin/sh -e
rm /etc/motd
mkdir -p {escape_dir}
echo escaped > {escape}
EOF
COPY <<EOF /etc/built-for
built for $WHO
EOF
COPY --from=build --chmod=755 /out/hello /usr/bin/hello
COPY --from=build /out/marker /etc/marker
COPY --from=build /tmp/staged /etc/staged
LABEL dev.a3s.box.agent.command='["/bin/sh", "-c", "exec sleep 2147483647"]'
CMD ["/usr/bin/hello"]
"""


def _project(root: Path, marker: str = "one", escape: Path | None = None, project: str = "builds") -> Path:
    app = root / "app"
    app.mkdir(exist_ok=True)
    (app / "hello.sh").write_text("#!/bin/sh\necho hello from @WHO@\n")
    (app / "ignored.txt").write_text("not in the context\n")
    (app / ".dockerignore").write_text("ignored.txt\n")
    escape = escape or root / "escape"  # a host path: the RUN writes it in its VM only
    (app / "Dockerfile").write_text(DOCKERFILE.format(base=BASE, marker=marker, escape=escape,
                                                      escape_dir=escape.parent))
    f = root / "Boxfile.yaml"
    f.write_text(f"""apiVersion: box.a3s.dev/v1
project: {project}
images:
  app:
    build:
      context: ./app
      args: {{WHO: "a RUN step"}}
      network: {{mode: none}}
boxes:
  runner:
    image: app
    resources: {{memory: 128Mi}}
""")
    return f


@pytest.fixture(scope="module")
def based(box: BoxCli, hello_image: Path) -> BoxCli:
    r = box("image", "import", str(hello_image), "--tag", BASE)
    assert r.code == 0, r.err
    return box


@pytest.fixture(scope="module")
def built(based: BoxCli, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BoxCli, Path]]:
    root = tmp_path_factory.mktemp("build")
    f = _project(root)
    yield based, f
    based("delete", "-f", str(f))


def _steps(err: str) -> tuple[int, int]:
    m = re.search(r"\((\d+) of (\d+) steps cached\)", err)
    assert m, err
    return int(m.group(1)), int(m.group(2))


def test_a_multi_stage_build_runs_in_vms_and_a_box_runs_its_program(built: tuple[BoxCli, Path]) -> None:
    box, f = built
    plan = box("plan", "-f", str(f))
    assert plan.code == 0, plan.err
    assert re.search(r"\+ image app\s+build: \S*app \(0 of 11 steps cached\)", plan.out), plan.out
    r = box("build", "-f", str(f), timeout=900)
    assert r.code == 0, r.err
    assert "built app: localhost/builds-app:latest sha256:" in r.out and "(0 of 11 steps cached)" in r.out
    assert "[build 4/11] RUN test -s /tmp/staged && echo one > /out/marker" in r.err  # progress per step
    assert not (f.parent / "escape").exists()  # the RUN wrote inside its VM, not here
    plan = box("plan", "-f", str(f))
    assert "(from the image's labels: namespaces.agent.command)" in plan.out, plan.out
    r = box("apply", "-f", str(f), timeout=600)
    assert r.code == 0, r.err
    out = box("exec", "runner", "--", "/usr/bin/hello")
    assert (out.code, out.out) == (0, "hello from a RUN step\n")
    assert box("exec", "runner", "--", "cat", "/etc/marker").out == "one\n"
    # what a RUN left in /tmp is the next step's and the stage's, as in Docker
    assert box("exec", "runner", "--", "cat", "/etc/staged").out == "kept\n"
    # COPY <<EOF makes a file, its $WHO expanded
    assert box("exec", "runner", "--", "cat", "/etc/built-for").out == "built for a RUN step\n"
    gone = box("exec", "runner", "--", "test", "-e", "/etc/motd")
    assert gone.code == 1  # deleted by a RUN of the final stage: a whiteout hides it
    assert box("exec", "runner", "--", "test", "-e", "/src/hello.sh").code == 1  # the build stage's only
    # the agent command came from the image's label: the box runs it
    ps = box("exec", "runner", "--", "ps", "-o", "args")
    assert "sleep 2147483647" in ps.out, ps
    inspect = json.loads(box("image", "inspect", "localhost/builds-app:latest").out)
    assert inspect["box_defaults"]["namespaces"]["agent"]["command"][-1] == "exec sleep 2147483647"
    assert inspect["config"]["config"]["Cmd"] == ["/usr/bin/hello"]


def test_the_deleting_run_made_a_whiteout_layer(built: tuple[BoxCli, Path], tmp_path: Path) -> None:
    box, _ = built
    out = tmp_path / "oci"
    assert box("image", "export", "localhost/builds-app:latest", str(out)).code == 0
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
    names = []
    for layer in manifest["layers"]:
        with tarfile.open(fileobj=gzip.open(out / "blobs/sha256" / layer["digest"][7:])) as t:
            names.append(t.getnames())
    assert any("etc/.wh.motd" in n for n in names), names
    assert not any(n.startswith(".a3s") for layer in names for n in layer)  # the guest init's own


def test_an_unchanged_rebuild_runs_nothing_and_a_changed_run_reruns_from_there(
        built: tuple[BoxCli, Path]) -> None:
    box, f = built
    r = box("build", "-f", str(f), timeout=900)
    assert r.code == 0, r.err
    assert _steps(r.out) == (11, 11)
    assert "  | " not in r.err  # no RUN printed anything: none ran
    plan = box("plan", "-f", str(f))
    assert "No changes" in plan.out, plan.out
    _project(f.parent, marker="two")  # the build stage's last RUN changes
    plan = box("plan", "-f", str(f))
    assert re.search(r"\+ image app\s+build: \S*app \(5 of 11 steps cached\)", plan.out), plan.out
    # apply builds what changed itself, and says so like any other outcome
    r = box("apply", "-f", str(f), timeout=900)
    assert r.code == 0, r.err
    assert "Traceback" not in r.err
    # WORKDIR, COPY, the first RUN and the final stage's RUN and COPY <<EOF come from the
    # cache, as the plan said; the changed RUN and what takes from it run again
    assert re.search(r"^✓ image app: built in \d+\.\ds \(5 of 11 steps cached\)$", r.err, re.M), r.err
    assert re.search(r"RUN <<EOF.*CACHED", r.err), r.err
    assert re.search(r"^✓ box runner: recreated", r.err, re.M), r.err
    assert box("exec", "runner", "--", "cat", "/etc/marker").out == "two\n"


def test_skopeo_and_umoci_read_the_export_and_unpack_the_same_tree(built: tuple[BoxCli, Path],
                                                                  tmp_path: Path) -> None:
    box, _ = built
    for tool in ("skopeo", "umoci"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: scripts/setup.sh --test installs it")
    out = tmp_path / "oci"
    assert box("image", "export", "localhost/builds-app:latest", str(out)).code == 0
    r = subprocess.run(["skopeo", "inspect", f"oci:{out}:localhost/builds-app:latest"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["Labels"]["dev.a3s.box.agent.command"].startswith("[")
    bundle = tmp_path / "bundle"
    r = subprocess.run(["umoci", "unpack", "--image", f"{out}:localhost/builds-app:latest", str(bundle)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    ours = box.home / "images" / "unpacked" / json.loads((out / "index.json").read_text())[
        "manifests"][0]["digest"][7:]
    assert ours.is_dir()
    assert _tree(bundle / "rootfs") == _tree(ours)


def _tree(root: Path) -> dict[str, tuple[int, str]]:
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = os.lstat(p)
            what = os.readlink(p) if p.is_symlink() else "" if p.is_dir() else \
                __import__("hashlib").sha256(p.read_bytes()).hexdigest()
            out[str(p.relative_to(root))] = (st.st_mode, what)
    return out


def test_bad_dockerfiles_and_failing_runs_are_located(based: BoxCli, tmp_path: Path) -> None:
    f = _project(tmp_path, project="badbuild")
    df = tmp_path / "app" / "Dockerfile"
    df.write_text(f"FROM {BASE}\nVOLUME /data\nFORM x\n")
    r = based("build", "-f", str(f))
    assert r.code == 2, r.err
    assert f"{df}:2:1: VOLUME: " in r.err and f"{df}:3:1: FORM: " in r.err and "Traceback" not in r.err
    assert based("plan", "-f", str(f)).code == 2
    df.write_text(f"FROM {BASE}\nRUN echo about to fail; exit 3\n")
    r = based("build", "-f", str(f), timeout=600)
    assert r.code == 1 and f"{df}:2:1: RUN failed: exit status 3" in r.err, r.err
    assert "about to fail" in r.err  # the step's own output is shown
    assert "localhost/badbuild-app" not in based("image", "ls").out  # nothing half made
    df.write_text(f"FROM {BASE}\nCOPY ignored.txt /\n")
    r = based("build", "-f", str(f))
    assert r.code == 1 and f"{df}:2:1: COPY ignored.txt: not found in the build context (excluded by " \
        ".dockerignore)" in r.err, r.err


def test_the_build_network_policy_holds_in_run(based: BoxCli, tmp_path: Path,
                                                internet: Internet) -> None:  # noqa: F811
    h = internet.http_port
    tools = build_tools_image(tmp_path / "tools")  # curl (busybox's static wget cannot resolve)
    assert based("image", "import", str(tools), "--tag", "localhost/a3s-test/tools:1").code == 0
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text(
        "FROM localhost/a3s-test/tools:1\n"
        f"RUN curl -fsS -m 10 -o /fetched http://pkg.test:{h}/pkg\n"
        f"RUN if curl -fsS -m 5 -o /x http://other.test:{h}/x; then echo reached; exit 1; fi\n")
    f = tmp_path / "Boxfile.yaml"
    f.write_text(f"""apiVersion: box.a3s.dev/v1
project: buildnet
images:
  net:
    build:
      context: ./app
      network:
        mode: allowlist
        egress: ["pkg.test:{h}"]
        hosts: {{pkg.test: 127.0.0.1, other.test: 127.0.0.1}}
""")
    r = based("build", "-f", str(f), timeout=900)
    assert r.code == 0, r.err
    assert any(req["path"] == "/pkg" for req in internet.requests)
    assert not any(req["path"] == "/x" for req in internet.requests)


def test_run_under_user_runs_as_that_user(based: BoxCli, tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text(f"FROM {BASE}\nRUN mkdir -m 777 /w\nUSER 1000:1000\n"
                                    "RUN id -u > /w/ids && id -g >> /w/ids\n")
    f = tmp_path / "Boxfile.yaml"
    f.write_text("apiVersion: box.a3s.dev/v1\nproject: builduser\nimages:\n"
                 "  u: {build: {context: ./app, network: {mode: none}}}\n")
    r = based("build", "-f", str(f), timeout=900)
    assert r.code == 0, r.err
    out = tmp_path / "oci"
    assert based("image", "export", "localhost/builduser-u:latest", str(out)).code == 0
    index = json.loads((out / "index.json").read_text())
    manifest = json.loads((out / "blobs/sha256" / index["manifests"][0]["digest"][7:]).read_text())
    with tarfile.open(fileobj=gzip.open(out / "blobs/sha256" / manifest["layers"][-1]["digest"][7:])) as t:
        m = t.getmember("w/ids")
        assert (m.uid, m.gid) == (1000, 1000)
        ids = t.extractfile(m)
        assert ids is not None and ids.read() == b"1000\n1000\n"
