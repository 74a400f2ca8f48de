"""Desired state: the validated Boxfile turned into canonical, hashable specs.

Pure: the only outside knowledge is `known_digests` (image name -> digest already in
the local store), passed in by the caller, so the same inputs always give the same specs.
"""
from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from a3s_box.boxfile.model import BoxDef, Boxfile, ImageDef, PoolDef
from a3s_box.units import format_size

_NOT_LABEL = re.compile(r"[^a-z0-9-]+")


@dataclass(frozen=True)
class BuildPreview:
    """What the store knows of a build without running it (Host.desired finds out)."""

    shown: str  # the context as the plan shows it (./agent)
    total: int  # steps
    cached: int  # steps the build cache has, from the first on
    digest: str | None  # the image the Boxfile's build makes, when it is built already


@dataclass(frozen=True)
class DesiredImage:
    name: str  # the images: key, or the reference itself for a direct reference
    source: str  # an OCI reference, an absolute path to a layout folder / tar, or a build context
    is_path: bool
    digest: str | None  # None: not in the local store yet ("known after pull")
    build: BuildPreview | None = None  # a build: what it would take
    definition: ImageDef | None = field(default=None, compare=False)  # a build's, for the executor


@dataclass(frozen=True)
class DesiredBox:
    name: str
    image: str  # DesiredImage.name
    spec: dict[str, Any]  # canonical, JSON-able; changes here mean recreate
    spec_hash: str
    depends_on: dict[str, str]  # box -> condition
    definition: BoxDef  # with the image's dev.a3s.box.* defaults for what the Boxfile leaves unset
    template_of: tuple[str, ...] = ()  # pools using it: a template is not booted on its own
    from_image: tuple[str, ...] = ()  # the fields whose values came from the image's labels


def with_image_defaults(box: BoxDef, defaults: Mapping[str, Any]) -> tuple[BoxDef, tuple[str, ...]]:
    """BOX with the image's label defaults (a3s_box.image.box_labels) for each field it
    leaves unset; and which fields those were. The Boxfile wins wherever it says anything."""
    from a3s_box.boxfile.model import AgentNamespace, Healthcheck, Namespaces, Network, Resources

    taken: list[str] = []
    update: dict[str, Any] = {}
    agent = box.namespaces.agent
    ag = dict((defaults.get("namespaces") or {}).get("agent") or {})
    agent_update = {}
    if "command" in ag and agent.command is None:
        agent_update["command"] = ag["command"]
    if "isolate" in ag and "isolate" not in agent.model_fields_set:
        agent_update["isolate"] = ag["isolate"]
    if agent_update:
        taken += [f"namespaces.agent.{k}" for k in sorted(agent_update)]
        new_agent = AgentNamespace.model_validate({**agent.model_dump(), **agent_update})
        update["namespaces"] = Namespaces.model_validate({**box.namespaces.model_dump(), "agent": new_agent.model_dump()})
    res = {k: v for k, v in (defaults.get("resources") or {}).items() if k not in box.resources.model_fields_set}
    if res:
        taken += [f"resources.{k}" for k in sorted(res)]
        update["resources"] = Resources.model_validate({**box.resources.model_dump(), **res})
    if defaults.get("healthcheck") and box.healthcheck is None:
        taken.append("healthcheck")
        update["healthcheck"] = Healthcheck.model_validate(defaults["healthcheck"])
    if defaults.get("network") and "network" not in box.model_fields_set:
        taken.append("network.egress")
        update["network"] = Network.model_validate(defaults["network"])
    return (box.model_copy(update=update) if update else box), tuple(taken)


@dataclass(frozen=True)
class DesiredPool:
    name: str
    box: str
    spec: dict[str, Any]
    spec_hash: str
    definition: PoolDef


@dataclass(frozen=True)
class DesiredState:
    project: str
    images: dict[str, DesiredImage] = field(default_factory=dict)
    boxes: dict[str, DesiredBox] = field(default_factory=dict)
    pools: dict[str, DesiredPool] = field(default_factory=dict)
    volumes: dict[str, int] = field(default_factory=dict)  # named volume -> size (bytes)


def project_name(boxfile: Boxfile, explicit: str | None = None) -> str:
    """`-p` wins, then `project:` in the Boxfile, then the Boxfile's folder name."""
    if explicit:
        return explicit
    if boxfile.project:
        return boxfile.project
    folder = Path(boxfile.files[0]).resolve().parent.name if boxfile.files else "default"
    label = _NOT_LABEL.sub("-", folder.lower()).strip("-")[:63]
    return label or "default"


def spec_hash(spec: Mapping[str, Any]) -> str:
    canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def box_spec(box: BoxDef, image_identity: str) -> dict[str, Any]:
    """The fields whose change requires a new VM. depends_on, healthcheck, lifetime and
    timeouts are deliberately left out: changing them never needs a reboot."""
    agent = box.namespaces.agent
    business = box.namespaces.business
    spec: dict[str, Any] = {
        "image": image_identity,
        "driver": box.driver,
        "hostname": box.hostname,
        "resources": {"vcpus": box.resources.vcpus, "memory": format_size(box.resources.memory)},
        "env": dict(sorted(box.env.items())),
        "namespaces": {
            "agent": {
                "command": list(agent.command) if agent.command is not None else None,
                "isolate": sorted(agent.isolate),
                "env": dict(sorted(agent.env.items())),
                "workdir": agent.workdir,
                "restart": agent.restart,
            },
            "business": None
            if business is None
            else {"parent": business.parent, "isolate": sorted(business.isolate)},
        },
    }
    # Only where used, so that boxes made before networking existed keep their hash.
    if box.network.enabled:
        net = box.network
        spec["network"] = {"mode": net.mode, "egress": list(net.egress), "deny": list(net.deny),
                           "hosts": dict(sorted(net.hosts.items())), "ports": list(net.ports)}
    if box.boot != "snapshot":
        spec["boot"] = box.boot  # only when not the default: older boxes keep their hash
    if box.security != "strict":
        spec["security"] = box.security
    if box.resources.disk is not None:
        spec["resources"]["disk"] = format_size(box.resources.disk)
    if (box.logging.max_size, box.logging.max_files) != (10 << 20, 5):
        spec["logging"] = {"max_size": format_size(box.logging.max_size), "max_files": box.logging.max_files}
    if box.volumes:
        spec["volumes"] = [{"type": v.type, "source": v.source, "target": v.target,
                            "read_only": v.read_only, "size": format_size(v.size) if v.size else None}
                           for v in box.volumes]
    if box.secrets:
        # names, variables and hosts: the values are never part of the spec (or the state)
        spec["secrets"] = {n: {"env": s.env, "hosts": list(s.hosts)} for n, s in sorted(box.secrets.items())}
    return spec


def built_image_name(project: str, image: str) -> str:
    """Where a Boxfile's build lands in the store (buildah's convention for local builds)."""
    return f"localhost/{project}-{image}:latest"


def desired_images(boxfile: Boxfile, known_digests: Mapping[str, str | None],
                   builds: Mapping[str, BuildPreview] | None = None) -> dict[str, DesiredImage]:
    """Every image the Boxfile needs, by name: its `images:` and the direct references
    of boxes. KNOWN_DIGESTS: what the store has of each (a build's: its preview's)."""
    images: dict[str, DesiredImage] = {}
    for name, img in sorted(boxfile.images.items()):
        if img.build is not None:
            preview = (builds or {}).get(name)
            images[name] = DesiredImage(name, str(img.build.context), False,
                                        preview.digest if preview else None, preview or BuildPreview(
                                            str(img.build.context), 0, 0, None), img)
            continue
        images[name] = _desired_image(name, img.ref, img.path, known_digests)
    for box in sorted(boxfile.boxes):
        key, img = boxfile.image_of(box)
        image_name = key if key is not None else (img.ref or str(img.path))
        if image_name not in images:
            images[image_name] = _desired_image(image_name, img.ref, img.path, known_digests)
    return images


def desired_state(
    boxfile: Boxfile, project: str, known_digests: Mapping[str, str | None],
    builds: Mapping[str, BuildPreview] | None = None,
    image_defaults: Mapping[str, Mapping[str, Any]] | None = None,
) -> DesiredState:
    """IMAGE_DEFAULTS: image name -> the box defaults its labels give, for images the
    store has (the caller reads them; a3s_box.image.box_labels checks them)."""
    images = desired_images(boxfile, known_digests, builds)
    boxes: dict[str, DesiredBox] = {}
    templates: dict[str, list[str]] = {}
    for pool_name, pool_def in sorted(boxfile.pools.items()):
        templates.setdefault(pool_def.box, []).append(pool_name)
    for name, box in sorted(boxfile.boxes.items()):
        key, img = boxfile.image_of(name)
        image_name = key if key is not None else (img.ref or str(img.path))
        di = images[image_name]
        kind = "build" if di.build is not None else "path" if di.is_path else "ref"
        identity = di.digest or f"{kind}:{di.source}"
        box, from_image = with_image_defaults(box, (image_defaults or {}).get(image_name) or {})
        spec = box_spec(box, identity)
        boxes[name] = DesiredBox(
            name=name,
            image=image_name,
            spec=spec,
            spec_hash=spec_hash(spec),
            depends_on={d: dep.condition for d, dep in sorted(box.depends_on.items())},
            definition=box,
            template_of=tuple(templates.get(name, ())),
            from_image=from_image,
        )
    pools: dict[str, DesiredPool] = {}
    for name, pool in sorted(boxfile.pools.items()):
        spec = {
            "box": pool.box,
            "box_spec": boxes[pool.box].spec_hash,
            "min_ready": pool.min_ready,
            "max": pool.max,
            "update": pool.update,
            "idle_timeout": pool.idle_timeout,
            **({"park": True} if pool.park else {}),  # absent when off: older hashes hold
        }
        pools[name] = DesiredPool(name, pool.box, spec, spec_hash(spec), pool)
    return DesiredState(project=project, images=images, boxes=boxes, pools=pools,
                        volumes={n: v.size for n, v in sorted(boxfile.volumes.items())})


def _desired_image(
    name: str, ref: str | None, path: Path | None, known: Mapping[str, str | None]
) -> DesiredImage:
    if ref is not None:
        return DesiredImage(name, ref, False, known.get(name))
    assert path is not None
    return DesiredImage(name, str(path), True, known.get(name))
