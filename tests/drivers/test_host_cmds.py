"""`box setup` and `box doctor` through the real CLI."""
from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from a3s_box.cli.main import cli
from a3s_box.drivers.common.artifacts import GuestArtifacts
from a3s_box.drivers.krun import host_support as krun_support
from a3s_box.home import Home


def test_doctor_on_a_provisioned_host(artifacts: GuestArtifacts, test_home: Home) -> None:
    r = CliRunner().invoke(cli, ["--home", str(test_home.root), "doctor", "-o", "json"])
    assert r.exit_code == 0, r.output
    checks = {c["name"]: c for c in json.loads(r.output)}
    assert list(checks) == ["mode", "qemu", "kernel", "guest-init", "kvm", "accelerator", "libkrun", "network",
                           "confinement", "snapshots"]
    assert checks["mode"]["detail"].startswith(f"root: {test_home.root};")  # these tests run as root
    assert checks["kernel"]["ok"] and artifacts.kernel_release in checks["kernel"]["detail"]
    assert checks["guest-init"]["ok"]
    accel = checks["accelerator"]["detail"]
    assert accel == ("qemu/kvm" if checks["kvm"]["ok"] else "qemu/tcg")
    krun = krun_support(test_home)  # the verdict doctor printed, now from the cache
    detail = str(checks["libkrun"].pop("detail")).removesuffix(" [cached]")
    assert checks["libkrun"] == {"name": "libkrun", "ok": krun.usable, "essential": False}
    assert detail == krun.detail.removesuffix(" [cached]")
    from a3s_box.drivers.common.boxnet import network_support

    ok, why = network_support()
    assert checks["network"]["ok"] is ok and why in checks["network"]["detail"]
    assert checks["network"]["essential"] is False  # boxes without a network run anyway


def test_doctor_on_a_fresh_home_says_what_to_do(tmp_path: Path) -> None:
    r = CliRunner().invoke(cli, ["--home", str(tmp_path / "h"), "doctor"])
    assert r.exit_code == 1
    lines = r.output.splitlines()
    assert "✗ kernel       not provisioned: run `box setup`" in lines
    assert lines[-4].startswith("✗ libkrun      ")  # nothing to probe with yet
    assert lines[-3].startswith(("✓ network      ", "✗ network      "))
    assert lines[-2].startswith(("✓ confinement  uid: ", "✗ confinement  boxes with security: strict"))
    assert lines[-1].startswith("✓ snapshots    qemu: boxes start as clones of templates (0 ready")


def test_setup_twice_is_a_no_op(artifacts: GuestArtifacts, test_home: Home) -> None:
    current = test_home.cache / "kernels" / "current"
    before = current.stat().st_mtime_ns
    r = CliRunner().invoke(cli, ["--home", str(test_home.root), "-q", "setup"])
    assert r.exit_code == 0, r.output
    assert "✓ kernel" in r.output and "✓ accelerator  qemu/" in r.output
    assert current.stat().st_mtime_ns == before
