"""Fixtures for the guest init tests: the real binary, run as `init --serve-stdio`.

These need root (the guest creates namespaces) and musl-gcc; nothing here is faked:
the host stands in for the VM, which only changes who is PID 1 and where the channel is.
"""
from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from a3s_box.guest.build import build_guest_init
from a3s_box.guest.client import GuestClient
from a3s_box.guest.local import spawn_local_guest
from a3s_box.guest.protocol import BoxConfig, Isolate, Restart


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="the guest init creates namespaces: needs root")
        for item in items:
            if "tests/guest/" in str(item.fspath):
                item.add_marker(skip)


@pytest.fixture(scope="session")
def guest_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_guest_init(tmp_path_factory.mktemp("cache"))


class LocalGuest:
    """A running `init --serve-stdio` and a client connected to it."""

    def __init__(self, binary: Path, state_dir: Path, box: str = "test") -> None:
        self.state_dir = state_dir
        self.log = state_dir / "console.log"
        self._log = open(self.log, "wb")  # what the VM console would show
        self.proc, sock = spawn_local_guest(binary, "--state-dir", str(state_dir),
                                            stderr=self._log.fileno())
        self.client = GuestClient(sock, box)

    def console(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        self.client.close()
        try:
            rc = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self._log.close()
        return rc


AGENT_CONFIG = BoxConfig(
    hostname="coder",
    env=("BOX_ENV=box", "SHARED=from-box"),
    argv=("sleep", "100000"),
    workdir="/tmp",
    agent_isolate=Isolate.MOUNT | Isolate.PID | Isolate.IPC | Isolate.UTS,
    business_isolate=Isolate.MOUNT | Isolate.PID | Isolate.IPC,
    restart=Restart.ALWAYS,
)


@pytest.fixture(scope="module")
def guest(guest_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalGuest]:
    """One configured guest shared by a module's tests: an agent that sleeps, and a
    business namespace. Tests must not break it (use `make_guest` for that)."""
    g = LocalGuest(guest_binary, tmp_path_factory.mktemp("guest"))
    g.client.hello(10)
    g.client.configure(AGENT_CONFIG, 10)
    yield g
    g.stop()


@pytest.fixture
def make_guest(guest_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        Callable[[], LocalGuest]]:
    """Fresh guests for tests that change or stop them."""
    started: list[LocalGuest] = []

    def make() -> LocalGuest:
        g = LocalGuest(guest_binary, tmp_path_factory.mktemp("guest"))
        started.append(g)
        return g

    yield make
    for g in started:
        g.stop()
