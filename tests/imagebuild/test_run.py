"""A RUN step whose VM never answers is booted once more on a fresh disk, then fails
located. The QEMU driver is faked (the hang it stands for, an early-boot stall under
TCG, cannot be produced on demand); the disk images are real (mkfs.ext4, qemu-img)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from a3s_box.imagebuild import run
from a3s_box.drivers.base import BoxLaunch
from a3s_box.errors import BuildError, GuestError
from a3s_box.home import Home


class _NeverAnswers:
    fresh: list[bool] = []  # at each boot: was the disk untouched by an earlier one?

    def __init__(self, home: Home) -> None:
        pass

    def start(self, launch: BoxLaunch, timeout: float) -> Any:
        assert launch.disk is not None
        data = launch.disk.read_bytes()
        self.fresh.append(not data.endswith(b"SCRIBBLED"))
        launch.disk.write_bytes(data + b"SCRIBBLED")  # what a half-booted guest may leave
        raise GuestError(launch.box_id, "the guest init did not answer in time; console:\nPCI: Fatal")


def test_a_vm_that_never_answers_is_booted_again_then_fails_located(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import a3s_box.drivers.qemu.driver as qemu
    monkeypatch.setattr(qemu, "QemuDriver", _NeverAnswers)
    home = Home(tmp_path / "home")
    tree = tmp_path / "tree"
    (tree / "etc").mkdir(parents=True)
    (tree / "etc" / "hostname").write_text("base\n")
    said: list[bytes] = []
    spec = run.RunSpec(argv=("/bin/sh", "-c", "true"), env=(), workdir="/", user=None, network=None)
    with pytest.raises(BuildError) as e:
        run.run_step(home, tree, spec, "agent", "Dockerfile:3", lambda b: None, said.append)
    assert _NeverAnswers.fresh == [True, True]
    assert "Dockerfile:3" in str(e.value) and "did not answer twice" in str(e.value)
    assert b"booting it again" in b"".join(said)
    assert not list((home.root / "build").iterdir())  # the step's work folder is gone
