"""The dependency graph of a Boxfile: images -> boxes -> pools, plus depends_on edges.

Nodes are `Node(kind, name)`; an edge u -> v means "u must be ready before v".
Iteration is deterministic (lexicographic), so plans and logs are stable byte for byte.

A small graph of its own rather than networkx's: a Boxfile's graph has tens of nodes
and needs four operations, and importing networkx costs about 0.1 s of every `box`
command that plans. Cycles are found (and named) before a graph is built, by
boxfile/references.py, which still asks networkx for them.
"""
from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["image", "box", "pool"]
_KIND_ORDER = {"image": 0, "box": 1, "pool": 2}


@dataclass(frozen=True, order=True)
class Node:
    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


def _key(n: Node) -> tuple[int, str]:
    return (_KIND_ORDER[n.kind], n.name)


@dataclass
class DependencyGraph:
    """Nodes and "must be ready before" edges; acyclic by construction (see above)."""
    _after: dict[Node, set[Node]] = field(default_factory=dict)  # node -> what waits for it
    _before: dict[Node, set[Node]] = field(default_factory=dict)  # node -> what it waits for

    def add_node(self, n: Node) -> None:
        self._after.setdefault(n, set())
        self._before.setdefault(n, set())

    def add_edge(self, u: Node, v: Node) -> None:
        self.add_node(u)
        self.add_node(v)
        self._after[u].add(v)
        self._before[v].add(u)

    def __contains__(self, n: object) -> bool:
        return n in self._after

    def __iter__(self) -> Iterator[Node]:
        return iter(sorted(self._after, key=_key))

    def predecessors(self, n: Node) -> Iterator[Node]:
        return iter(sorted(self._before[n], key=_key))

    def successors(self, n: Node) -> Iterator[Node]:
        return iter(sorted(self._after[n], key=_key))

    @property
    def edges(self) -> list[tuple[Node, Node]]:
        return [(u, v) for u in self for v in self.successors(u)]


def build_graph(
    images: dict[str, object],
    box_images: dict[str, str],
    box_deps: dict[str, list[str]],
    pool_boxes: dict[str, str],
) -> DependencyGraph:
    """images: image names; box_images: box -> image name; box_deps: box -> the boxes it
    depends on; pool_boxes: pool -> template box. References must already be valid."""
    g = DependencyGraph()
    for name in images:
        g.add_node(Node("image", name))
    for box, image in box_images.items():
        g.add_node(Node("box", box))
        g.add_edge(Node("image", image), Node("box", box))
    for box, deps in box_deps.items():
        for dep in deps:
            g.add_edge(Node("box", dep), Node("box", box))
    for pool, box in pool_boxes.items():
        g.add_edge(Node("box", box), Node("pool", pool))
    return g


def ordered(g: DependencyGraph) -> list[Node]:
    """A topological order, images first, then boxes, then pools, names sorted: of the
    nodes ready at each step, the smallest by (kind, name) comes next."""
    waiting = {n: len(g._before[n]) for n in g}
    ready = [(_key(n), n) for n, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    out: list[Node] = []
    while ready:
        _, n = heapq.heappop(ready)
        out.append(n)
        for m in g._after[n]:
            waiting[m] -= 1
            if waiting[m] == 0:
                heapq.heappush(ready, (_key(m), m))
    if len(out) != len(waiting):
        raise ValueError("the dependency graph has a cycle")  # references.py refuses those first
    return out


def generations(g: DependencyGraph) -> list[list[Node]]:
    """Sets of nodes that can run in parallel, in order; each sorted."""
    waiting = {n: len(g._before[n]) for n in g}
    level = [n for n, count in waiting.items() if count == 0]
    out: list[list[Node]] = []
    while level:
        out.append(sorted(level, key=_key))
        following = []
        for n in level:
            for m in g._after[n]:
                waiting[m] -= 1
                if waiting[m] == 0:
                    following.append(m)
        level = following
    return out


def dependants(g: DependencyGraph, node: Node) -> set[Node]:
    """Everything that waits for NODE, directly or not."""
    seen: set[Node] = set()
    todo = list(g._after.get(node, ()))
    while todo:
        n = todo.pop()
        if n not in seen:
            seen.add(n)
            todo.extend(g._after[n])
    return seen
