"""Every `box` command, driven into its error paths: each ends in a message and a
non-zero exit, never a traceback or the last-resort "internal error" (exit 70).

The table names every command; a command added without its cases fails
`test_every_command_has_error_cases`. Runs in-process through the console script's
own `main(argv)` on an empty home (no VM is booted: these are the paths before one)."""
from __future__ import annotations

from pathlib import Path

import click
import pytest

from a3s_box.cli.main import cli, main
from tests.small_disk import SmallDisk, small_disk  # noqa: F401  (the fixture)

HEAD = "apiVersion: box.a3s.dev/v1\n"

# command -> argument lists that reach its error paths (files from `workdir` below)
CASES: dict[str, list[list[str]]] = {
    "apply": [[], ["-f", "bad.yaml"], ["-f", "nocontext.yaml"], ["-f", "badcopy.yaml"],
              ["-o", "json", "-f", "badcopy.yaml"], ["--watch", "--dry-run"]],
    "build": [["-f", "bad.yaml"], ["-f", "build.yaml", "nope"], ["-f", "badcopy.yaml"]],
    "cp": [["nobox:/x", "."], ["a", "b"], ["./missing", "nobox:/x"]],
    "delete": [["nobox"], ["-f", "bad.yaml"]],
    "diff": [[], ["-f", "bad.yaml"]],
    "doctor": [["-o", "xml"]],
    "events": [["--since"]],
    "exec": [["nobox", "--", "true"], ["nobox"]],
    "fork": [["nobox", "--name", "x"], ["nobox"]],
    "image export": [["nope", "out"]],
    "image import": [["/nonexistent"], ["afile"]],
    "image inspect": [["nope"]],
    "image ls": [["-o", "xml"]],
    "image prune": [["--max-size", "lots"]],
    "image pull": [["bad ref!"], ["localhost:1/nope:1"]],
    "image rm": [["nope"]],
    "inspect": [["nobox"]],
    "mcp": [["extra"]],
    "logs": [["nobox"], ["--since", "yesterday", "nobox"], ["--network", "nobox"]],
    "pause": [["nobox"]],
    "plan": [["-f", "bad.yaml"], ["--detailed-exitcode", "-f", "bad.yaml"], ["-f", "nocontext.yaml"]],
    "pool acquire": [["nopool"], ["-p", "nope", "nopool"]],
    "pool fill": [["-p", "nope"], []],
    "pool ls": [["-o", "xml"]],
    "pool release": [["nobox"]],
    "ps": [["-o", "xml"]],
    "resume": [["nobox"]],
    "schema": [["extra"]],
    "serve": [["--listen", "nope"], ["--token-file", "/proc/nope", "--print-token"]],
    "setup": [["-o", "xml"]],
    "snapshot ls": [["-o", "xml"]],
    "snapshot prune": [["extra"]],
    "snapshot rm": [["nokey"]],
    "start": [["nobox"]],
    "stop": [["nobox"]],
    "token create": [[], ["--template"]],
    "token ls": [["extra"], ["-o", "xml"]],
    "token revoke": [["nope"], []],
    "validate": [["-f", "bad.yaml"], ["-f", "missing.yaml"]],
    "volume inspect": [["nope"]],
    "volume ls": [["-o", "xml"]],
    "volume rm": [["nope"]],
}


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    out = []
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            out += _commands(cmd, f"{prefix}{name} ")
        else:
            out.append(prefix + name)
    return out


def test_every_command_has_error_cases() -> None:
    assert sorted(CASES) == _commands(cli)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("A3S_BOX_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("A3S_BOX_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text("boxes: {a: {image: nope, bogus: 1}}\n")
    (tmp_path / "afile").write_text("not an image\n")
    (tmp_path / "nocontext.yaml").write_text(
        HEAD + "project: p\nimages: {app: {build: {context: ./missing}}}\nboxes: {a: {image: app}}\n")
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "Dockerfile").write_text("FROM scratch\nCOPY nothere /x\n")
    (tmp_path / "badcopy.yaml").write_text(
        HEAD + "project: p\nimages: {app: {build: {context: ./ctx}}}\nboxes: {a: {image: app}}\n")
    (tmp_path / "build.yaml").write_text(HEAD + "project: p\nimages: {app: {build: {context: ./ctx}}}\n")
    return tmp_path


@pytest.mark.parametrize("argv", [pytest.param(c.split() + a, id=" ".join(c.split() + a))
                                  for c, cases in sorted(CASES.items()) for a in cases + [["--bogus"]]])
def test_error_paths_end_in_a_message_and_an_exit_code(argv: list[str], workdir: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    out = capsys.readouterr()
    assert exit_.value.code in (1, 2), (exit_.value.code, out.err)
    assert out.err.strip(), "an error must say what went wrong"
    assert "Traceback" not in out.err + out.out and "internal error" not in out.err


def test_an_unexpected_failure_is_an_internal_error_without_a_traceback(
        workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import a3s_box.orchestrator.host as host

    def broken(*a: object, **k: object) -> None:
        raise KeyError("build")

    monkeypatch.setattr(host.Host, "ps", broken)  # stands in for a bug
    with pytest.raises(SystemExit) as exit_:
        main(["ps"])
    err = capsys.readouterr().err
    assert exit_.value.code == 70
    assert "internal error (KeyError: 'build')" in err and "Traceback" not in err
    monkeypatch.setenv("A3S_BOX_DEBUG", "1")
    with pytest.raises(SystemExit):
        main(["ps"])
    assert "Traceback" in capsys.readouterr().err  # asked for


def test_an_os_error_names_its_path(workdir: Path, capsys: pytest.CaptureFixture[str],
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import a3s_box.orchestrator.host as host

    def denied(*a: object, **k: object) -> None:
        raise OSError(13, "Permission denied", str(workdir / "home" / "state.db"))

    monkeypatch.setattr(host.Host, "ps", denied)
    with pytest.raises(SystemExit) as exit_:
        main(["ps"])
    assert exit_.value.code == 1
    assert capsys.readouterr().err == f"error: {workdir}/home/state.db: Permission denied\n"


def test_a_full_disk_no_edge_translated_still_names_the_disk(workdir: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The last resort: an ENOSPC that reached the CLI as it was is said as every full
    disk is (a3s_box.disks.space), naming the folder of the file and what is free."""
    import re

    import a3s_box.orchestrator.host as host

    def full(*a: object, **k: object) -> None:
        raise OSError(28, "No space left on device", str(workdir / "home" / "state.db"))

    monkeypatch.setattr(host.Host, "ps", full)
    with pytest.raises(SystemExit) as exit_:
        main(["ps"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert re.fullmatch(rf"error: {workdir}/home/state.db: no space left on {workdir}/home "
                        r"\(file system [^;]+; [\d.]+ [KMG]iB free\)\n", err), err


def test_standard_output_on_a_full_disk_is_named(small_disk: SmallDisk, tmp_path: Path) -> None:
    """`box schema > FILE` (or `box logs x > FILE`) on a full disk: its file and folder."""
    import os
    import re
    import subprocess
    import sys

    disk = small_disk.mount(64 << 10)
    small_disk.fill(disk)
    env = {**os.environ, "A3S_BOX_HOME": str(tmp_path / "home"), "PYTHONPATH": str(Path(__file__).parents[2])}
    env.pop("A3S_BOX_DEBUG", None)
    with open(disk / "schema.json", "wb") as out:
        r = subprocess.run([sys.executable, "-m", "a3s_box.cli", "schema"], stdout=out, stderr=subprocess.PIPE,
                           text=True, env=env, timeout=60)
    assert r.returncode == 1
    assert re.fullmatch(rf"error: standard output \({disk}/schema.json\): no space left on {disk} "
                        r"\(\d+ KiB free\)\n", r.stderr), r.stderr
