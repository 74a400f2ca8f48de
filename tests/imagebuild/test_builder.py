"""The builder's host-side steps, with no VM: Dockerfiles without RUN build entirely on
the host (FROM scratch or a stored image, COPY/ADD, WORKDIR, ENV, LABEL, CMD...), so
the cache, COPY's rules, .dockerignore, --chown/--chmod, config steps and the preview
are checked here; RUN in its microVM is tests/e2e/test_image_build.py's."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from a3s_box.imagebuild.builder import Builder, BuildRequest, BuildResult, StepEvent
from a3s_box.errors import BuildError, DockerfileError
from a3s_box.home import Home
from a3s_box.image.store import ImageStore


@pytest.fixture()
def env(tmp_path: Path) -> tuple[Home, ImageStore, Path]:
    home = Home(tmp_path / "home")
    home.ensure()
    ctx = tmp_path / "ctx"
    (ctx / "src/sub").mkdir(parents=True)
    (ctx / "src/a.txt").write_text("a\n")
    (ctx / "src/sub/b.txt").write_text("b\n")
    (ctx / "src/skip.log").write_text("ignored\n")
    (ctx / "tool.sh").write_text("#!/bin/sh\necho tool\n")
    (ctx / ".dockerignore").write_text("**/*.log\n")
    (ctx / "etc").mkdir()
    (ctx / "etc/passwd").write_text("root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
    (ctx / "etc/group").write_text("root:x:0:\napp:x:1000:\n")
    with tarfile.open(ctx / "bundle.tar.gz", "w:gz") as t:
        data = b"from the archive\n"
        info = tarfile.TarInfo("inside/file.txt")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    return home, ImageStore(home), ctx


DOCKERFILE = """\
ARG GREETING=hi
FROM scratch AS base
COPY etc/ /etc/
WORKDIR /app
COPY src .
COPY --chown=app:app --chmod=750 tool.sh /usr/local/bin/tool
ADD bundle.tar.gz /opt/
ARG GREETING
ENV GREETING=${GREETING} PATH=/usr/local/bin:/bin
LABEL dev.a3s.box.resources.vcpus=2 org.example.greeting=$GREETING
EXPOSE 8080
CMD ["/usr/local/bin/tool"]

FROM base
COPY --from=base /app/a.txt /copied.txt
HEALTHCHECK --interval=5s --retries=2 CMD ["/usr/local/bin/tool"]
"""


def _build(home: Home, store: ImageStore, ctx: Path, text: str = DOCKERFILE, **kw: Any) -> tuple[
        BuildResult, list[StepEvent]]:
    (ctx / "Dockerfile").write_text(text)
    events: list[StepEvent] = []
    req = BuildRequest(name="localhost/t-app:latest", context=ctx, dockerfile=ctx / "Dockerfile", **kw)
    return Builder(home, store, events.append).build(req), events


def test_a_build_without_run_makes_the_image_copy_rules_say(env: tuple[Home, ImageStore, Path]) -> None:
    home, store, ctx = env
    result, events = _build(home, store, ctx, args={"GREETING": "hello"})
    r = result.record
    assert r is not None
    assert (result.total, result.cached) == (11, 0)
    root = store.unpacked_dir(r)
    assert (root / "app/a.txt").read_text() == "a\n" and (root / "app/sub/b.txt").read_text() == "b\n"
    assert not (root / "app/skip.log").exists()  # .dockerignore
    tool = (root / "usr/local/bin/tool").stat()
    assert (tool.st_uid, tool.st_gid, tool.st_mode & 0o777) == (1000, 1000, 0o750)
    assert (root / "opt/inside/file.txt").read_text() == "from the archive\n"  # ADD extracts
    assert (root / "copied.txt").read_text() == "a\n"
    config = json.loads(store.blobs.read(r.config_digest))["config"]
    assert config["Env"] == ["GREETING=hello", "PATH=/usr/local/bin:/bin"]
    assert config["WorkingDir"] == "/app" and config["Cmd"] == ["/usr/local/bin/tool"]
    assert config["Labels"] == {"dev.a3s.box.resources.vcpus": "2", "org.example.greeting": "hello"}
    assert config["ExposedPorts"] == {"8080/tcp": {}}
    assert config["Healthcheck"] == {"Test": ["CMD", "/usr/local/bin/tool"], "Interval": 5_000_000_000,
                                     "Retries": 2}
    assert [e.number for e in events if e.number] == list(range(1, 12))


def test_an_unchanged_rebuild_is_all_cached_and_a_changed_source_rebuilds_from_its_copy(
        env: tuple[Home, ImageStore, Path]) -> None:
    home, store, ctx = env
    first, _ = _build(home, store, ctx)
    again, events = _build(home, store, ctx)
    assert first.record is not None and again.record is not None
    assert (again.cached, again.record.digest) == (11, first.record.digest)
    assert all(e.cached for e in events if e.number)
    (ctx / "src/skip.log").write_text("ignored, whatever it says\n")  # not in the context
    assert _build(home, store, ctx)[0].cached == 11
    (ctx / "src/a.txt").write_text("changed\n")
    changed, events = _build(home, store, ctx)
    # COPY etc/, WORKDIR cached; COPY src and all after it run again
    assert changed.cached == 2
    assert [e.number for e in events if e.number and not e.cached][0] == 3
    assert changed.record is not None
    assert (store.unpacked_dir(changed.record) / "copied.txt").read_text() == "changed\n"
    nocache, _ = _build(home, store, ctx, no_cache=True)
    assert nocache.cached == 0


def test_the_preview_counts_what_the_cache_has_and_runs_nothing(env: tuple[Home, ImageStore, Path]) -> None:
    home, store, ctx = env
    (ctx / "Dockerfile").write_text(DOCKERFILE)
    req = BuildRequest(name="localhost/t-app:latest", context=ctx, dockerfile=ctx / "Dockerfile")
    before = Builder(home, store).preview(req)
    assert (before.total, before.cached, before.key, before.record) == (11, 0, None, None)
    built = Builder(home, store).build(req)
    after = Builder(home, store).preview(req)
    assert (after.cached, after.key) == (11, built.key)
    stored = store.get("localhost/t-app:latest")
    assert stored is not None and stored.source_digest == built.key


def test_the_preview_counts_cached_steps_past_a_miss_in_stages_that_do_not_depend_on_it(
        env: tuple[Home, ImageStore, Path]) -> None:
    home, store, ctx = env
    two_stages = """\
FROM scratch AS build
COPY src/a.txt /a.txt
COPY tool.sh /tool.sh
FROM scratch
COPY etc/ /etc/
LABEL org.example.kind=final
COPY --from=build /a.txt /a.txt
CMD ["/tool.sh"]
"""
    built, _ = _build(home, store, ctx, two_stages)
    (ctx / "src/a.txt").write_text("changed\n")
    req = BuildRequest(name="localhost/t-app:latest", context=ctx, dockerfile=ctx / "Dockerfile")
    preview = Builder(home, store).preview(req)
    # the build stage's first COPY misses (and its second is unknown); the final stage's
    # COPY etc/ and LABEL are still cached, and its COPY --from=build is unknown
    assert (preview.total, preview.cached, preview.key) == (6, 2, None)
    rebuilt, _ = _build(home, store, ctx, two_stages)
    assert rebuilt.cached == 2
    assert rebuilt.key != built.key


def test_a_target_stage_builds_only_what_it_needs(env: tuple[Home, ImageStore, Path]) -> None:
    home, store, ctx = env
    result, _ = _build(home, store, ctx, target="base")
    assert result.total == 9
    with pytest.raises(BuildError, match="target 'nope' is not a stage"):
        _build(home, store, ctx, target="nope")


def test_bad_steps_are_located_in_the_dockerfile(env: tuple[Home, ImageStore, Path]) -> None:
    home, store, ctx = env
    with pytest.raises(BuildError) as e:
        _build(home, store, ctx, "FROM scratch\nCOPY missing.txt /\n")
    assert str(e.value).endswith(f"{ctx / 'Dockerfile'}:2:1: COPY missing.txt: not found in the build context")
    with pytest.raises(BuildError, match=r"Dockerfile:2:1: COPY \.\./outside: outside the build context"):
        _build(home, store, ctx, "FROM scratch\nCOPY ../outside /\n")
    with pytest.raises(BuildError, match=r"Dockerfile:2:1: user 'nobody' is not in the image's /etc/passwd"):
        _build(home, store, ctx, "FROM scratch\nCOPY --chown=nobody tool.sh /\n")
    with pytest.raises(DockerfileError):
        _build(home, store, ctx, "FROM scratch\nONBUILD RUN x\n")
    (ctx / "link").symlink_to("/etc/shadow")
    with pytest.raises(BuildError, match="points outside the build context"):
        _build(home, store, ctx, "FROM scratch\nCOPY link /x\n")
    assert store.get("localhost/t-app:latest") is None  # nothing half made is registered


def test_cached_steps_survive_garbage_collection_until_prune(env: tuple[Home, ImageStore, Path]) -> None:
    home, store, ctx = env
    _build(home, store, ctx)
    store.remove("localhost/t-app:latest")  # the image goes; its steps stay cached
    assert _build(home, store, ctx)[0].cached == 11
    store.prune(set())
    assert _build(home, store, ctx)[0].cached == 0


HEREDOC_COPY = '''\
FROM scratch
ARG WHO=builder
COPY <<EOF /etc/greeting
hello from $WHO
EOF
COPY --chmod=600 <<-'RAW' <<CONF /etc/app/
	kept $WHO as written
	RAW
name=${WHO}
CONF
'''


def test_copy_heredocs_make_files_expanded_unless_quoted(env: tuple[Home, ImageStore, Path]) -> None:
    home, store, ctx = env
    result, _ = _build(home, store, ctx, HEREDOC_COPY, args={"WHO": "a heredoc"})
    assert result.record is not None
    root = store.unpacked_dir(result.record)
    assert (root / "etc/greeting").read_text() == "hello from a heredoc\n"
    raw = root / "etc/app/RAW"
    assert raw.read_text() == "kept $WHO as written\n"  # quoted: no expansion; <<- strips tabs
    assert raw.stat().st_mode & 0o777 == 0o600
    assert (root / "etc/app/CONF").read_text() == "name=a heredoc\n"
    # the content is in the cache key: another body is another step
    again, _ = _build(home, store, ctx, HEREDOC_COPY.replace("hello from", "hi from"), args={"WHO": "a heredoc"})
    assert again.cached == 0
    assert again.record is not None
    assert (store.unpacked_dir(again.record) / "etc/greeting").read_text() == "hi from a heredoc\n"


def test_run_heredocs_become_the_shells_script_or_an_executed_file() -> None:
    from a3s_box.imagebuild.builder import run_command
    from a3s_box.imagebuild.dockerfile import parse

    def run(text: str) -> tuple[tuple[str, ...], bytes | None]:
        ins = parse(f"FROM x\n{text}", "Dockerfile").stages[0].instructions[0]
        return run_command(("/bin/sh", "-c"), ins)

    assert run("RUN <<EOF\necho a\necho b\nEOF\n") == (("/bin/sh", "-c", "echo a\necho b\n"), None)
    # a #! line: the content is executed as a file (the guest helper runs it from stdin)
    assert run("RUN <<EOF\n#!/usr/bin/env python3\nprint(1)\nEOF\n") == ((), b"#!/usr/bin/env python3\nprint(1)\n")
    # a heredoc inside a command: the shell reads it after the command line, as written
    assert run("RUN cat <<-EOF > /x && echo done\n\tbody\n\tEOF\n") == (
        ("/bin/sh", "-c", "cat <<-EOF > /x && echo done\n\tbody\nEOF\n"), None)
    assert run('RUN ["echo", "<<EOF"]\n') == (("echo", "<<EOF"), None)  # exec form: no heredoc
