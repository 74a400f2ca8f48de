from __future__ import annotations

from a3s_box.boxfile.references import find_cycle
from a3s_box.orchestrator.graph import Node, build_graph, dependants, generations, ordered


def test_order_is_images_then_boxes_by_dependency_then_pools() -> None:
    g = build_graph({"base": 1, "aaa": 1}, {"coder": "base", "db": "base", "web": "aaa"},
                    {"coder": ["db"], "db": [], "web": []}, {"coders": "coder"})
    assert [str(n) for n in ordered(g)] == [
        "image aaa", "image base", "box db", "box coder", "box web", "pool coders"]
    assert generations(g)[0] == [Node("image", "aaa"), Node("image", "base")]
    assert [str(n) for n in generations(g)[1]] == ["box db", "box web"]


def test_cycles_are_reported_from_the_smallest_name() -> None:
    assert find_cycle({"c": ["a"], "a": ["b"], "b": ["c"]}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": ["a"]}) == ["a", "a"]
    assert find_cycle({"a": ["b"], "b": []}) is None


def test_dependants_are_everything_downstream_and_nothing_else() -> None:
    g = build_graph({"base": 1, "other": 1}, {"db": "base", "coder": "base", "web": "other"},
                    {"coder": ["db"], "db": [], "web": []}, {"coders": "coder"})
    assert dependants(g, Node("box", "db")) == {Node("box", "coder"), Node("pool", "coders")}
    assert dependants(g, Node("image", "other")) == {Node("box", "web")}
    assert dependants(g, Node("pool", "coders")) == set()
    assert (Node("image", "base"), Node("box", "db")) in g.edges and len(g.edges) == 5
