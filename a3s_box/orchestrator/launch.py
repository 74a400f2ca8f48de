"""From a box definition and its image's config to what the driver and guest init need.

Pure. Precedence follows docker: image env < box env < agent env; the agent command
defaults to the image's Entrypoint + Cmd, its workdir to the image's WorkingDir.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from a3s_box.drivers.base import BoxLaunch, BoxNetwork, BoxVolume
from a3s_box.errors import DriverError
from a3s_box.guest.protocol import BoxConfig, Isolate, Restart
from a3s_box.logs.writer import LogLimits
from a3s_box.network.trust import ca_environment
from a3s_box.network.policy import NetworkPolicy
from a3s_box.network.secrets import new_placeholder

if TYPE_CHECKING:
    from a3s_box.boxfile.model import BoxDef

_ISOLATE = {"mount": Isolate.MOUNT, "pid": Isolate.PID, "ipc": Isolate.IPC, "uts": Isolate.UTS,
            "net": Isolate.NET}
_RESTART = {"always": Restart.ALWAYS, "on-failure": Restart.ON_FAILURE, "never": Restart.NEVER}
# Memory kept outside the agent's cgroup so that an agent using all it may never
# starves the guest init (and with it the host's control channel).
_GUEST_RESERVE = 48 << 20
DEFAULT_PIDS_MAX = 4096


def isolate_flags(names: Iterable[str]) -> Isolate:
    flags = Isolate(0)
    for n in names:
        flags |= _ISOLATE[n]
    return flags


def _env_map(env: Any) -> dict[str, str]:
    if isinstance(env, Mapping):
        return {str(k): str(v) for k, v in env.items()}
    out: dict[str, str] = {}
    for item in env or ():
        k, _, v = str(item).partition("=")
        out[k] = v
    return out


def box_network(name: str, box: BoxDef, environ: Mapping[str, str],
                placeholder: Callable[[str], str] = new_placeholder) -> BoxNetwork | None:
    """The box's network and its secrets, each with a fresh placeholder and the name of
    the variable that holds its value: the value itself is never stored (the driver
    reads it from the environment each time it starts the box's proxy)."""
    if not box.network.enabled and not box.secrets:
        return None
    policy = box.network.policy()
    secrets: dict[str, dict[str, Any]] = {}
    for sname, s in sorted(box.secrets.items()):
        if s.env not in environ:
            raise DriverError(name, f"secret {sname}: environment variable {s.env} is not set")
        secrets[sname] = {"placeholder": placeholder(sname), "env": s.env, "hosts": list(s.hosts)}
    return BoxNetwork(policy, secrets)


def agent_config(name: str, box: BoxDef, image_config: Any,
                 network: BoxNetwork | None = None) -> BoxConfig:
    agent = box.namespaces.agent
    env = _env_map(getattr(image_config, "env", None))
    env.update(box.env)
    env.update(agent.env)
    if network is not None and network.secrets:
        # The box sees placeholders only; its TLS clients trust the box's CA (its
        # proxy terminates TLS to the secrets' hosts, and only those).
        env.update({n: str(s["placeholder"]) for n, s in network.secrets.items()})
        env.update(ca_environment())
    # The guest init puts `nsexec` in /.a3s: keep it reachable whatever PATH the image sets.
    if "PATH" in env and "/.a3s" not in env["PATH"].split(":"):
        env["PATH"] += ":/.a3s"
    if agent.command is not None:
        argv = tuple(agent.command)
    else:
        argv = tuple(getattr(image_config, "entrypoint", None) or ()) + tuple(
            getattr(image_config, "cmd", None) or ()
        )
        if not argv:
            raise DriverError(name, "namespaces.agent.command is not set and the image has "
                                    "no Entrypoint or Cmd: nothing to run as the agent")
    business = box.namespaces.business
    memory = box.resources.memory
    return BoxConfig(
        hostname=box.hostname or name,
        env=tuple(f"{k}={v}" for k, v in sorted(env.items())),
        argv=argv,
        workdir=agent.workdir or getattr(image_config, "workdir", None) or "",
        agent_isolate=isolate_flags(agent.isolate),
        business_isolate=isolate_flags(business.isolate) if business is not None else Isolate(0),
        restart=_RESTART[agent.restart],
        memory_max=max(memory - _GUEST_RESERVE, memory * 3 // 4),
        pids_max=DEFAULT_PIDS_MAX,
        **_business_containment(business, max(memory - _GUEST_RESERVE, memory * 3 // 4)),
    )


def _business_from_json(b: Mapping[str, Any] | None) -> dict[str, Any]:
    """A box.json from before containment has no `business`: the defaults (contained)."""
    if not b:
        return {}
    return {"business_contained": bool(b["contained"]), "business_uid": int(b["uid"]),
            "business_gid": int(b["gid"]), "business_share": tuple(b["share"]),
            "business_memory_max": int(b.get("memory_max") or 0), "business_pids_max": int(b.get("pids_max") or 0)}


def _business_containment(business: Any, agent_memory: int) -> dict[str, Any]:
    if business is None:
        return {}
    uid, _, gid = business.user.partition(":")
    return {"business_contained": not business.privileged, "business_uid": int(uid),
            "business_gid": int(gid or uid), "business_share": tuple(business.share),
            "business_memory_max": business.memory if business.memory is not None else agent_memory * 3 // 4,
            "business_pids_max": business.pids}


def box_volumes(box: BoxDef, disk_of: Callable[[str], Path]) -> tuple[BoxVolume, ...]:
    """The box's volumes for its driver; DISK_OF gives a named volume's disk file."""
    out = []
    for v in box.volumes:
        if v.type == "bind":
            out.append(BoxVolume("bind", v.target, v.read_only, source=str(v.source)))
        elif v.type == "volume":
            out.append(BoxVolume("volume", v.target, v.read_only, source=str(disk_of(str(v.source))),
                                 name=str(v.source)))
        else:
            out.append(BoxVolume("tmpfs", v.target, v.read_only, size=v.size or 0))
    return tuple(out)


def box_launch(box_id: str, name: str, box: BoxDef, image_config: Any, rundir: Path,
               disk: Path | None, rootfs_dir: Path | None = None,
               network: BoxNetwork | None = None, volumes: tuple[BoxVolume, ...] = (),
               image: str = "") -> BoxLaunch:
    return BoxLaunch(
        box_id=box_id,
        rundir=rundir,
        vcpus=box.resources.vcpus,
        memory_mib=box.resources.memory >> 20,
        config=agent_config(name, box, image_config, network),
        disk=disk,
        rootfs_dir=rootfs_dir,
        network=network,
        volumes=volumes,
        boot=box.boot,
        image=image,
        security=box.security,
        logging=LogLimits(box.logging.max_size, box.logging.max_files),
        disk_size=box.resources.disk,
    )


def launch_to_json(launch: BoxLaunch) -> dict[str, Any]:
    """Kept in the box's folder so `box start` can boot it again without the Boxfile."""
    c = launch.config
    return {
        "box_id": launch.box_id,
        "rundir": str(launch.rundir),
        "vcpus": launch.vcpus,
        "memory_mib": launch.memory_mib,
        "disk": str(launch.disk) if launch.disk else None,
        "rootfs_dir": str(launch.rootfs_dir) if launch.rootfs_dir else None,
        "network": {"policy": launch.network.policy.to_json(), "secrets": launch.network.secrets}
        if launch.network is not None else None,
        "volumes": [v.to_json() for v in launch.volumes],
        "boot": launch.boot,
        "image": launch.image,
        "park": launch.park,
        "security": launch.security,
        "logging": launch.logging.to_json(),
        "disk_size": launch.disk_size,
        "config": {
            "hostname": c.hostname, "env": list(c.env), "argv": list(c.argv),
            "workdir": c.workdir, "agent_isolate": int(c.agent_isolate),
            "business_isolate": int(c.business_isolate), "restart": int(c.restart),
            "memory_max": c.memory_max, "pids_max": c.pids_max,
            "business": {"contained": c.business_contained, "uid": c.business_uid,
                         "gid": c.business_gid, "share": list(c.business_share),
                         "memory_max": c.business_memory_max, "pids_max": c.business_pids_max},
        },
    }


def launch_from_json(data: Mapping[str, Any]) -> BoxLaunch:
    c = data["config"]
    return BoxLaunch(
        box_id=data["box_id"],
        rundir=Path(data["rundir"]),
        vcpus=int(data["vcpus"]),
        memory_mib=int(data["memory_mib"]),
        disk=Path(data["disk"]) if data.get("disk") else None,
        rootfs_dir=Path(data["rootfs_dir"]) if data.get("rootfs_dir") else None,
        network=BoxNetwork(NetworkPolicy.from_json(data["network"]["policy"]), data["network"].get("secrets") or {})
        if data.get("network") else None,
        volumes=tuple(BoxVolume(**v) for v in data.get("volumes") or ()),
        boot=str(data.get("boot") or "cold"),
        image=str(data.get("image") or ""),
        park=bool(data.get("park")),
        security=str(data.get("security") or "strict"),
        logging=LogLimits.from_json(data.get("logging")),
        disk_size=int(data["disk_size"]) if data.get("disk_size") else None,
        config=BoxConfig(
            hostname=c["hostname"], env=tuple(c["env"]), argv=tuple(c["argv"]),
            workdir=c["workdir"], agent_isolate=Isolate(c["agent_isolate"]),
            business_isolate=Isolate(c["business_isolate"]), restart=Restart(c["restart"]),
            memory_max=int(c["memory_max"]), pids_max=int(c["pids_max"]),
            **_business_from_json(c.get("business")),
        ),
    )
