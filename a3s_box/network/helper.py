"""The box's network helper: `python -m a3s_box.network.helper RUNDIR`.

Started by the box's supervisor (the shim) before the VMM, as its child; dies with it.
Reads RUNDIR/network.json, makes the box's network namespace (netns.py), serves the
egress proxy and DNS inside it and the published ports on the host (egress.py), then
prints one JSON line on stdout and closes it:
    {"ok": true, "netns": "/proc/PID/fd/N"}     the supervisor opens this and starts
                                                 the VMM inside the namespace
    {"ok": false, "error": "..."}               the box must not start
network.json (written by the driver, 0600, deleted here once read: the one file that holds
secret values, which stay on the host and in this process's memory):
    {"box_id", "policy": NetworkPolicy.to_json(), "secrets": {NAME: {placeholder, value,
     hosts}}, "forwards": [[PUBLISHED_INDEX, INNER_PORT], ...], "ca_dir": str | null}
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from a3s_box.logs.writer import LogLimits
from a3s_box.network.egress import DnsProtocol, Egress, relay_published
from a3s_box.network.log import NetworkLog, network_dir
from a3s_box.network.netns import DNS_PORT, PROXY_PORT, NetNamespace, NetnsError
from a3s_box.network.policy import NetworkPolicy
from a3s_box.network.privileges import drop_privileges
from a3s_box.network.secrets import SecretBook


def _announce(data: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(data) + "\n")
    sys.stdout.flush()
    sys.stdout.close()
    os.close(1)


async def _serve(rundir: Path, run_as: tuple[int, int] | None = None) -> None:
    path = rundir / "network.json"
    conf = json.loads(path.read_text())
    path.unlink()  # secret values live on in this process only
    policy = NetworkPolicy.from_json(conf["policy"])
    secrets = SecretBook.from_json(conf.get("secrets"))
    # Held open: once root is dropped the box's folder (0700, root's) cannot be walked
    # to, but what is reached through these still can be (the magic links of /proc/self/fd).
    own = os.open(network_dir(rundir), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    activity = os.open(rundir / "activity", os.O_RDONLY | os.O_CLOEXEC)
    here = Path(f"/proc/self/fd/{own}")
    log = NetworkLog(here / "network.log", str(conf["box_id"]), LogLimits.from_json(conf.get("logging")),
                     activity=activity)
    ns = NetNamespace()
    try:
        ns.configure(PROXY_PORT, DNS_PORT)
        tcp = ns.listener(socket.SOCK_STREAM, PROXY_PORT)
        udp = ns.listener(socket.SOCK_DGRAM, DNS_PORT)
    except (NetnsError, OSError) as e:
        raise NetnsError(f"box network namespace: {e}") from e
    egress = Egress(policy, secrets, log, Path(conf["ca_dir"]) if conf.get("ca_dir") else None,
                    leaves=here / "leaves")
    loop = asyncio.get_running_loop()
    flows = asyncio.create_task(egress.serve(tcp))
    servers: list[asyncio.Server] = []
    await loop.create_datagram_endpoint(lambda: DnsProtocol(egress), sock=udp)
    for index, inner_port in conf.get("forwards", []):
        pub = policy.ports[int(index)]

        async def on_published(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                               inner_port: int = int(inner_port)) -> None:
            await relay_published(r, w, ns.stream_socket(), inner_port)
        try:
            servers.append(await asyncio.start_server(on_published, pub.host_ip, pub.host_port,
                                                      reuse_address=True))
        except OSError as e:
            raise NetnsError(f"cannot publish {pub.text()}: {pub.host_ip}:{pub.host_port}: "
                             f"{e.strerror or e}") from e
    if run_as is not None:
        drop_privileges(*run_as)
    _announce({"ok": True, "netns": f"/proc/{os.getpid()}/fd/{ns.fd}"})
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    flows.cancel()
    for s in servers:
        s.close()
    log.close()


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print("usage: python -m a3s_box.network.helper RUNDIR [UID:GID]", file=sys.stderr)
        return 2
    run_as = tuple(int(x) for x in argv[2].split(":")) if len(argv) == 3 else None
    try:
        asyncio.run(_serve(Path(argv[1]), run_as))  # type: ignore[arg-type]
    except (NetnsError, OSError, KeyError, ValueError) as e:
        try:
            _announce({"ok": False, "error": str(e)})
        except (OSError, ValueError):
            print(f"network helper: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
