"""dev.a3s.box.* labels as box defaults: each checked by its Boxfile field's rules; a bad
one or an unknown one names the image and the label."""
from __future__ import annotations

import pytest

from a3s_box.errors import ImageError
from a3s_box.image.box_labels import box_defaults

P = "dev.a3s.box."


def test_labels_give_boxfile_shaped_defaults() -> None:
    got = box_defaults("img", {
        P + "agent.command": '["/bin/sh", "-c", "exec agent"]', P + "agent.isolate": "mount, pid",
        P + "resources.vcpus": "2", P + "resources.memory": "512Mi",
        P + "healthcheck.command": '["true"]', P + "healthcheck.retries": "4",
        P + "network.egress": '["api.openai.com", "*.pypi.org"]', "org.other": "ignored"})
    assert got == {"namespaces": {"agent": {"command": ["/bin/sh", "-c", "exec agent"], "isolate": ["mount", "pid"]}},
                   "resources": {"vcpus": 2, "memory": "512Mi"},
                   "healthcheck": {"command": ["true"], "retries": 4},
                   "network": {"mode": "allowlist", "egress": ["api.openai.com", "*.pypi.org"]}}
    assert box_defaults("img", {"org.opencontainers.image.title": "x"}) == {}


@pytest.mark.parametrize("labels, message", [
    ({P + "agent.command": "sleep 1"}, f'image img: label {P}agent.command: must be a JSON array, like'),
    ({P + "agent.command": "[1, 2]"}, f"image img: label {P}agent.command: must be a JSON array of strings"),
    ({P + "resources.vcpus": "two"}, f"image img: label {P}resources.vcpus: 'two' is not a whole number"),
    ({P + "resources.vcpus": "100"}, f"image img: label {P}resources.vcpus: Input should be less than or equal to 64"),
    ({P + "resources.memory": "lots"}, f"image img: label {P}resources.memory: "),
    ({P + "agent.isolate": "mount,time"}, f"image img: label {P}agent.isolate: "),
    ({P + "network.egress": '["not a host!"]'}, f"image img: label {P}network.egress: "),
    ({P + "healthcheck.retries": "3"}, f"image img: label {P}healthcheck.command: needed with"),
    ({P + "agent.cmd": '["x"]'}, f"image img: label {P}agent.cmd: unknown (a3s-box reads "),
])
def test_a_bad_label_names_the_image_and_the_label(labels: dict[str, str], message: str) -> None:
    with pytest.raises(ImageError) as e:
        box_defaults("img", labels)
    assert str(e.value).startswith(message), str(e.value)
