"""Files at rest, attacked as another local user of the host (`nobody` here): the home
is 0700 and its state 0600, an existing home open to others is closed (and the user
told), and no host process of a box inherits the caller's environment."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from a3s_box.drivers.common.environ import host_process_env


def _box(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "a3s_box.cli", "--home", str(home), *args],
                          capture_output=True, text=True, timeout=60)


def _as_nobody(*argv: str) -> subprocess.CompletedProcess[str]:
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    return subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *argv],
                          capture_output=True, text=True, timeout=30)


def test_another_user_cannot_read_the_state(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)  # as a service's documented home once was
    tmp_path.chmod(0o755)
    r = _box(home, "ps")
    assert r.returncode == 0, r.stderr
    assert f"{home} was open to other users (mode 0755); made it 0700" in r.stderr
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "state.db").stat().st_mode) == 0o600
    assert _as_nobody("cat", str(home / "state.db")).returncode != 0
    assert _as_nobody("ls", str(home)).returncode != 0
    home.chmod(0o755)  # even with the folder opened again by hand, the database is private
    assert _as_nobody("cat", str(home / "state.db")).returncode != 0
    assert "made it 0700" in _box(home, "ps").stderr
    assert "made it 0700" not in _box(home, "ps").stderr  # said once, when it happened


def test_an_old_state_db_open_to_others_is_closed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert _box(home, "ps").returncode == 0
    (home / "state.db").chmod(0o644)
    assert _box(home, "ps").returncode == 0
    assert stat.S_IMODE((home / "state.db").stat().st_mode) == 0o600


def test_host_processes_get_a_short_allow_list_not_the_callers_environment() -> None:
    env = host_process_env({"PATH": "/usr/bin", "OPENAI_API_KEY": "sk-live", "A3S_TEST_TOKEN": "x",
                            "SSL_CERT_FILE": "/ca.pem", "HOME": "/root", "AWS_SECRET_ACCESS_KEY": "y"})
    assert env == {"PATH": "/usr/bin", "SSL_CERT_FILE": "/ca.pem"}
    assert host_process_env({})["PATH"]
