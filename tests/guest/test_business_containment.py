"""Business code attacks the agent and the VM from inside its namespace, against the
real guest init (run by the host as `init --serve-stdio`: the host stands in for the
VM, so "the VM's disk" is this host's /dev/vda and "the agent's /tmp" a folder of a
test's). Each attack worked before business code was contained (issue 22, item 13);
the same from a real VM is in tests/e2e/test_demo.py."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from a3s_box.guest.protocol import Namespace
from tests.guest.conftest import AGENT_CONFIG, LocalGuest


@pytest.fixture(scope="module")
def contained(guest_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalGuest, Path]]:
    import tempfile

    shared = Path(tempfile.mkdtemp(prefix="a3s-share-", dir="/var/tmp"))  # not below /tmp: its own
    shared.chmod(0o777)
    g = LocalGuest(guest_binary, tmp_path_factory.mktemp("guest"))
    g.client.hello(10)
    g.client.configure(replace(AGENT_CONFIG, business_share=(str(shared),)), 10)
    yield g, shared
    g.stop()
    import shutil

    shutil.rmtree(shared, ignore_errors=True)


def _business(g: LocalGuest, script: str) -> tuple[int, str]:
    r = g.client.run(["sh", "-c", script], ns=Namespace.BUSINESS)
    return r.exit.code, (r.stdout + r.stderr).decode()


def test_business_code_has_no_privilege(contained: tuple[LocalGuest, Path]) -> None:
    g, _ = contained
    _, out = _business(g, "id -u; id -g; grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs|Seccomp):' "
                          "/proc/self/status")
    lines = out.split()
    assert lines[:2] == ["65534", "65534"], out
    status = dict(zip(lines[2::2], lines[3::2]))
    assert status == {"CapEff:": "0000000000000000", "CapPrm:": "0000000000000000",
                      "CapBnd:": "0000000000000000", "CapAmb:": "0000000000000000",
                      "NoNewPrivs:": "1", "Seccomp:": "2"}, out


def test_business_code_cannot_touch_what_the_agent_keeps(contained: tuple[LocalGuest, Path]) -> None:
    g, _ = contained
    agent = g.client.run(["sh", "-c", "echo agent-data > /tmp/a3s-agent-file; cat /tmp/a3s-agent-file"],
                         ns=Namespace.AGENT)
    assert agent.stdout == b"agent-data\n"
    code, out = _business(g, "cat /tmp/a3s-agent-file; echo tampered > /tmp/a3s-agent-file; "
                             "echo x > /etc/a3s-business-was-here; echo rc=$?")
    assert "agent-data" not in out and "rc=0" not in out, out
    again = g.client.run(["cat", "/tmp/a3s-agent-file"], ns=Namespace.AGENT)
    assert again.stdout == b"agent-data\n"  # its own /tmp got the write, not the agent's
    assert not os.path.exists("/etc/a3s-business-was-here")


def test_business_code_sees_no_device_of_the_vm(contained: tuple[LocalGuest, Path]) -> None:
    g, _ = contained
    _, out = _business(g, "ls /dev | sort | tr '\\n' ' '; head -c 1 /dev/vda; echo vda=$?; "
                          "head -c 1 /dev/mem; echo mem=$?; test -e /dev/kmsg; echo kmsg=$?")
    assert out.startswith("fd full null ptmx pts random shm stderr stdin stdout tty urandom zero "), out
    assert "vda=0" not in out and "mem=0" not in out and "kmsg=1" in out, out


@pytest.mark.parametrize("attack", [
    "mount -t tmpfs x /tmp",  # a file system of its own choosing
    "unshare -m true",  # new namespaces (where it would be root again)
    "unshare -U -r true",
    "mknod /tmp/blk b 8 0",
    "chroot / true",
    "hostname owned",
])
def test_business_code_cannot_mount_unshare_or_make_devices(contained: tuple[LocalGuest, Path], attack: str) -> None:
    g, _ = contained
    code, out = _business(g, attack)
    assert code != 0, (attack, out)


def test_a_shared_path_is_writable_and_the_rest_read_only(contained: tuple[LocalGuest, Path]) -> None:
    g, shared = contained
    code, out = _business(g, f"echo result > {shared}/out.txt && cat {shared}/out.txt")
    assert (code, out) == (0, "result\n"), out
    assert (shared / "out.txt").read_text() == "result\n"  # the agent's tree has it


def test_a_privileged_business_namespace_is_as_before(make_guest: Callable[[], LocalGuest]) -> None:
    g = make_guest()
    g.client.hello(10)
    g.client.configure(replace(AGENT_CONFIG, business_contained=False), 10)
    _, out = _business(g, "id -u; grep CapEff /proc/self/status")
    assert out.split()[0] == "0" and "0000000000000000" not in out


def test_root_without_capabilities_when_asked(make_guest: Callable[[], LocalGuest]) -> None:
    g = make_guest()
    g.client.hello(10)
    g.client.configure(replace(AGENT_CONFIG, business_uid=0, business_gid=0), 10)
    _, out = _business(g, "id -u; grep CapEff /proc/self/status; mount -t tmpfs x /tmp; echo rc=$?")
    assert out.split()[:3] == ["0", "CapEff:", "0000000000000000"] and "rc=0" not in out, out
