"""Stage 5: cross references of a validated Boxfile: images, depends_on, pools,
namespace parents and dependency cycles. Pure; returns every problem found."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from a3s_box.boxfile.messages import Issue, did_you_mean
from a3s_box.boxfile.model import is_direct_reference


def check_references(raw: dict[str, Any]) -> list[Issue]:
    """Works on the raw (interpolated) data, defensively, so that reference problems
    are reported together with type problems, not only once those are fixed."""
    issues: list[Issue] = []
    images = _mapping(raw.get("images"))
    boxes = _mapping(raw.get("boxes"))
    names = sorted(str(b) for b in boxes)
    deps: dict[str, list[str]] = {}
    for key, box in sorted(boxes.items(), key=lambda kv: str(kv[0])):
        name = str(key)  # a non-string key is reported by the model check; go on with its text
        box = _mapping(box)
        image = box.get("image")
        if isinstance(image, str) and image and image not in images and not is_direct_reference(image):
            issues.append(Issue(("boxes", name, "image"), (
                f"unknown image '{image}'{did_you_mean(image, sorted(map(str, images)))}; "
                "a direct reference needs a tag or registry, e.g. busybox:latest")))
        raw_deps = box.get("depends_on")
        conditions = _conditions(raw_deps)
        deps[name] = [d for d in conditions if d in names and d != name]
        for dep, cond in conditions.items():
            where = _dep_path(name, dep, raw_deps)
            if dep == name:
                issues.append(Issue(where, f"box {name} depends on itself", at_key=True))
            elif dep not in names:
                others = [b for b in names if b != name]
                issues.append(Issue(where, f"unknown box '{dep}'{did_you_mean(dep, others)}",
                                    at_key=True))
            elif cond == "healthy" and not _mapping(boxes.get(dep)).get("healthcheck"):
                issues.append(Issue(where, f"waits for box {dep} to be healthy, but {dep} "
                                           "declares no healthcheck", at_key=True))
        business = _mapping(_mapping(box.get("namespaces")).get("business"))
        parent = business.get("parent", "agent")
        if isinstance(parent, str) and parent != "agent":
            issues.append(Issue(("boxes", name, "namespaces", "business", "parent"), (
                f"unknown namespace '{parent}'{did_you_mean(parent, ['agent'])}: "
                "business nests in 'agent'")))
    cycle = find_cycle(deps)
    if cycle is not None:
        # Placed at the entry that closes the cycle (its last edge, back to the start).
        last, start = cycle[-2], cycle[-1]
        raw_deps = _mapping(boxes.get(last)).get("depends_on")
        issues.append(Issue(_dep_path(last, start, raw_deps),
                            f"dependency cycle: {' -> '.join(cycle)}", at_key=True))
    for name, pool in sorted(_mapping(raw.get("pools")).items(), key=lambda kv: str(kv[0])):
        box_name = _mapping(pool).get("box")
        if isinstance(box_name, str) and box_name not in names:
            issues.append(Issue(("pools", name, "box"),
                                f"unknown box '{box_name}'{did_you_mean(box_name, names)}"))
    return issues


def _mapping(v: Any) -> dict[Any, Any]:
    return v if isinstance(v, dict) else {}


def _conditions(raw_deps: Any) -> dict[str, str]:
    if isinstance(raw_deps, list):
        return {d: "started" for d in raw_deps if isinstance(d, str)}
    if isinstance(raw_deps, dict):
        return {str(d): str(_mapping(c).get("condition", "started")) for d, c in raw_deps.items()}
    return {}


def _dep_path(box: str, dep: str, raw_deps: Any) -> tuple[str | int, ...]:
    base: tuple[str | int, ...] = ("boxes", box, "depends_on")
    if isinstance(raw_deps, list) and dep in raw_deps:
        return base + (raw_deps.index(dep),)
    return base + (dep,)


def find_cycle(deps: dict[str, list[str]]) -> list[str] | None:
    """The first dependency cycle in name order, as [a, b, a], or None."""
    if _acyclic(deps):
        return None
    import networkx as nx  # only now: ~0.1 s to import, and most Boxfiles have no cycle

    g: Any = nx.DiGraph()  # typed loosely: the stubs are optional
    for box in sorted(deps):
        g.add_node(box)
        for dep in sorted(deps[box]):
            g.add_edge(box, dep)
    # The cycle through the smallest name, shortest first (BFS): deterministic and
    # linear, where listing every simple cycle can be exponential.
    sccs = [c for c in nx.strongly_connected_components(g) if len(c) > 1 or g.has_edge(*[next(iter(c))] * 2)]
    if not sccs:
        return None
    start = min(min(c) for c in sccs)
    parent: dict[str, str] = {}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for nxt in sorted(g.successors(node)):
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(parent[path[-1]])
                return [start] + list(reversed(path[:-1])) + [start] if node != start else [start, start]
            if nxt not in parent:
                parent[nxt] = node
                queue.append(nxt)
    return None


def _acyclic(deps: dict[str, list[str]]) -> bool:
    """Kahn's algorithm: True when every box can be ordered."""
    waiting = {box: len(set(ds)) for box, ds in deps.items()}
    dependants: dict[str, list[str]] = {}
    for box, ds in deps.items():
        for d in set(ds):
            dependants.setdefault(d, []).append(box)
    ready = [b for b, n in waiting.items() if n == 0]
    done = 0
    while ready:
        box = ready.pop()
        done += 1
        for later in dependants.get(box, ()):
            waiting[later] -= 1
            if waiting[later] == 0:
                ready.append(later)
    return done == len(waiting)


def check_secrets(model: Any, environ: Mapping[str, str] | None) -> list[Issue]:
    """Each secret's hosts must be reachable on 443 under the box's own policy; with
    ENVIRON (at apply), each secret's variable must be set there."""
    from a3s_box.network.secrets import secret_endpoint

    issues: list[Issue] = []
    for name, box in sorted(model.boxes.items()):
        policy = box.network.policy()
        for sname, secret in sorted(box.secrets.items()):
            for i, (host, port) in enumerate(secret_endpoint(h) for h in secret.hosts):
                if not policy.allows_name(host, port):
                    issues.append(Issue(("boxes", name, "secrets", sname, "hosts", i), (
                        f"{host} is not reachable on port {port} under this box's network "
                        f"(mode {box.network.mode}): allow it in network.egress")))
            if environ is not None and secret.env not in environ:
                issues.append(Issue(("boxes", name, "secrets", sname, "env"), (
                    f"environment variable {secret.env} is not set: box {name} needs it for "
                    f"secret {sname}")))
    return issues


def check_volumes(model: Any, for_apply: bool) -> list[Issue]:
    """Named volumes must be declared; at apply, a bind's host folder must exist."""
    issues: list[Issue] = []
    declared = sorted(model.volumes)
    for name, box in sorted(model.boxes.items()):
        seen: dict[str, int] = {}
        for i, v in enumerate(box.volumes):
            if v.target in seen:
                issues.append(Issue(("boxes", name, "volumes", i),
                                    f"{v.target} is already the target of volumes.{seen[v.target]}"))
            seen.setdefault(v.target, i)
            if v.type == "volume" and v.source not in model.volumes:
                issues.append(Issue(("boxes", name, "volumes", i), (
                    f"unknown volume '{v.source}'{did_you_mean(str(v.source), declared)}: declare it "
                    "under the top-level volumes:, or write a host folder as ./path")))
            elif v.type == "bind" and for_apply:
                src = Path(str(v.source))
                if not src.is_dir():
                    what = "is not a folder" if src.exists() else "does not exist"
                    issues.append(Issue(("boxes", name, "volumes", i),
                                        f"bind source {src} {what} (box {name})"))
    return issues


def check_builds(model: Any) -> list[Issue]:
    """A build's context must be a folder holding its Dockerfile."""
    issues: list[Issue] = []
    for name, img in sorted(model.images.items()):
        build = img.build
        if build is None:
            continue
        context = Path(build.context)
        if not context.is_dir():
            what = "is not a folder" if context.exists() else "does not exist"
            issues.append(Issue(("images", name, "build", "context"), f"build context {context} {what}"))
            continue
        dockerfile = context / build.dockerfile
        if not dockerfile.is_file():
            issues.append(Issue(("images", name, "build", "dockerfile"), (
                f"no Dockerfile at {dockerfile}" + ("" if build.dockerfile == "Dockerfile" else
                                                    " (dockerfile: is relative to the context)"))))
    return issues
