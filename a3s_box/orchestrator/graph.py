"""The dependency graph of a Boxfile: images -> boxes -> pools, plus depends_on edges.

Nodes are `Node(kind, name)`; an edge u -> v means "u must be ready before v".
Iteration is deterministic (lexicographic), so plans and logs are stable byte for byte.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import networkx as nx

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


def build_graph(
    images: dict[str, object],
    box_images: dict[str, str],
    box_deps: dict[str, list[str]],
    pool_boxes: dict[str, str],
) -> "nx.DiGraph[Node]":
    """images: image names; box_images: box -> image name; box_deps: box -> the boxes it
    depends on; pool_boxes: pool -> template box. References must already be valid."""
    g: nx.DiGraph[Node] = nx.DiGraph()
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


def ordered(g: "nx.DiGraph[Node]") -> list[Node]:
    """A topological order, images first, then boxes, then pools, names sorted."""
    return list(nx.lexicographical_topological_sort(g, key=_key))


def generations(g: "nx.DiGraph[Node]") -> list[list[Node]]:
    """Sets of nodes that can run in parallel, in order; each sorted."""
    return [sorted(gen, key=_key) for gen in nx.topological_generations(g)]


def dependants(g: "nx.DiGraph[Node]", node: Node) -> set[Node]:
    return set(nx.descendants(g, node))
