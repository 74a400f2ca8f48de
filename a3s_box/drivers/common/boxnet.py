"""What a driver does for a box's network: hand its policy to the network helper that
the supervisor starts (a3s_box.network.helper), and put the box's CA into the guest.
The decisions themselves are all in a3s_box.network."""
from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from collections.abc import Mapping
from typing import Any

from a3s_box.drivers.base import BoxLaunch
from a3s_box.errors import DriverError, HostUnsupported
from a3s_box.network.trust import GUEST_CA_BUNDLE, GUEST_CA_CERT, GUEST_TRUST_STORE
from a3s_box.network.netns import missing_tools
from a3s_box.network.policy import NetworkPolicy

NETWORK_JSON = "network.json"
FORWARD_BASE = 20000  # published port i is forwarded from the namespace's 127.0.0.1:20000+i


def network_support() -> tuple[bool, str]:
    """For `box doctor` and for refusing boxes: can this host give a box its own netns?"""
    missing = missing_tools()
    if missing:
        return False, (f"{', '.join(missing)} not found (apt install iproute2 iptables): boxes with "
                       "network mode allowlist or public cannot start")
    if os.geteuid() != 0:
        if not user_namespaces_work():
            return False, ("needs root, or user namespaces (this host refuses an unprivileged "
                           "`unshare --user --net`: see kernel.unprivileged_userns_clone or "
                           "kernel.apparmor_restrict_unprivileged_userns)")
        return True, ("rootless: per-box network namespace inside a user namespace of yours, "
                      "transparent egress proxy with its own DNS (a daemon of yours; every TCP "
                      "port, UDP only for DNS)")
    return True, ("per-box network namespace, transparent egress proxy with its own DNS "
                  "(every TCP port, UDP only for DNS)")


@functools.cache
def user_namespaces_work() -> bool:
    """Whether this user may make a user namespace with a network namespace in it."""
    try:
        return subprocess.run(["unshare", "--user", "--map-root-user", "--net", "true"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def secret_values(box_id: str, secrets: Mapping[str, Mapping[str, Any]],
                  environ: Mapping[str, str]) -> dict[str, dict[str, Any]]:
    """The secrets with their values, read from ENVIRON now: a value is never stored,
    so it is read each time a box's proxy starts (a box.json from before values were
    kept out of it still carries its `value`)."""
    out: dict[str, dict[str, Any]] = {}
    for name, s in sorted(secrets.items()):
        if "value" in s:
            value = str(s["value"])
        elif str(s.get("env")) in environ:
            value = environ[str(s["env"])]
        else:
            raise DriverError(box_id, f"secret {name}: environment variable {s.get('env')} is not set "
                                      "(secret values are read when a box starts, never stored)")
        out[name] = {"placeholder": s["placeholder"], "value": value, "hosts": list(s.get("hosts") or ())}
    return out


def prepare_network(launch: BoxLaunch, environ: Mapping[str, str] = os.environ) -> tuple[tuple[int, int], ...]:
    """Write RUNDIR/network.json for the helper, the one file that holds secret values
    (0600; the helper deletes it once read); the (namespace port, box port) forwards."""
    assert launch.network is not None
    ok, why = network_support()
    if not ok:
        raise HostUnsupported("qemu", f"box {launch.box_id}: network mode "
                              f"{launch.network.policy.mode}: {why}")
    policy = launch.network.policy
    forwards = tuple((FORWARD_BASE + i, p.box_port) for i, p in enumerate(policy.ports))
    ca_dir = None
    if launch.network.secrets:
        from a3s_box.network.ca import ensure_ca  # cryptography: only for boxes with secrets

        ensure_ca(launch.rundir, launch.box_id)
        ca_dir = str(launch.rundir)
    conf: dict[str, Any] = {"box_id": launch.box_id, "policy": policy.to_json(),
                            "secrets": secret_values(launch.box_id, launch.network.secrets, environ),
                            "ca_dir": ca_dir,
                            "forwards": [[i, inner] for i, (inner, _) in enumerate(forwards)],
                            "logging": launch.logging.to_json()}
    path = launch.rundir / NETWORK_JSON
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(conf, f)
    os.replace(tmp, path)
    return forwards


def install_box_ca(client: Any, rundir: Path) -> None:
    """The box's CA into the guest, before the agent starts: alone, in a bundle with the
    image's own trust store, and appended to that store where the image has one."""
    client.trust((rundir / "ca.pem").read_bytes(), GUEST_CA_CERT, GUEST_CA_BUNDLE, GUEST_TRUST_STORE)
