"""Box defaults an image carries as labels (`LABEL dev.a3s.box.agent.command=...`), for
the Boxfile fields a box leaves unset:

    dev.a3s.box.agent.command         JSON array: the agent's argv
    dev.a3s.box.agent.isolate         JSON array or comma list: mount, pid, ipc, uts, net
    dev.a3s.box.resources.vcpus       a number
    dev.a3s.box.resources.memory      a size: 512Mi
    dev.a3s.box.healthcheck.command   JSON array (.interval .timeout .start_period: 5s; .retries: 3)
    dev.a3s.box.network.egress        JSON array or comma list: the allow-list (mode allowlist)

Each value is checked by the same rules as the Boxfile field it stands for; a bad one
(or an unknown dev.a3s.box.* label) is an ImageError naming the image and the label.
Pure."""
from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from a3s_box.errors import ImageError

PREFIX = "dev.a3s.box."
_LISTS = {"agent.command", "agent.isolate", "healthcheck.command", "network.egress"}
_FIELDS = {"agent.command", "agent.isolate", "resources.vcpus", "resources.memory", "healthcheck.command",
           "healthcheck.interval", "healthcheck.timeout", "healthcheck.start_period", "healthcheck.retries",
           "network.egress"}


def _value(image: str, label: str, key: str, raw: str) -> Any:
    if key in _LISTS:
        text = raw.strip()
        if text.startswith("["):
            try:
                v = json.loads(text)
            except ValueError as e:
                raise ImageError(image, f"label {label}: not a JSON array: {e}") from e
            if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
                raise ImageError(image, f"label {label}: must be a JSON array of strings")
            return v
        if key.endswith("command"):
            raise ImageError(image, f'label {label}: must be a JSON array, like ["/bin/sh", "-c", "..."]')
        return [x.strip() for x in text.split(",") if x.strip()]
    if key in ("resources.vcpus", "healthcheck.retries"):
        try:
            return int(raw)
        except ValueError as e:
            raise ImageError(image, f"label {label}: {raw!r} is not a whole number") from e
    return raw


def box_defaults(image: str, labels: Mapping[str, str]) -> dict[str, Any]:
    """The Boxfile-shaped defaults IMAGE's labels give: {"namespaces": {"agent": ...},
    "resources": ..., "healthcheck": ..., "network": ...}, only what the labels say."""
    from a3s_box.boxfile.model import AgentNamespace, Healthcheck, Network, Resources

    found: dict[str, tuple[str, Any]] = {}
    for label, raw in sorted(labels.items()):
        if not label.startswith(PREFIX):
            continue
        key = label[len(PREFIX):]
        if key not in _FIELDS:
            known = ", ".join(PREFIX + k for k in sorted(_FIELDS))
            raise ImageError(image, f"label {label}: unknown (a3s-box reads {known})")
        found[key] = (label, _value(image, label, key, raw))
    out: dict[str, Any] = {}

    def check(model: Any, data: dict[str, Any], section: str) -> Any:
        try:
            return model.model_validate(data)
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            field = ".".join(str(x) for x in err["loc"] if not isinstance(x, int)) or ""
            label = next((lbl for k, (lbl, _) in found.items() if k == f"{section}.{field}"),
                         next(lbl for k, (lbl, _) in found.items() if k.startswith(section + ".")))
            raise ImageError(image, f"label {label}: {err['msg']}") from e

    agent = {k.split(".", 1)[1]: v for k, (_, v) in found.items() if k.startswith("agent.")}
    if agent:
        check(AgentNamespace, agent, "agent")
        out["namespaces"] = {"agent": agent}
    res = {k.split(".", 1)[1]: v for k, (_, v) in found.items() if k.startswith("resources.")}
    if res:
        check(Resources, res, "resources")
        out["resources"] = res
    hc = {k.split(".", 1)[1]: v for k, (_, v) in found.items() if k.startswith("healthcheck.")}
    if hc:
        if "command" not in hc:
            raise ImageError(image, f"label {PREFIX}healthcheck.command: needed with the other "
                                    f"{PREFIX}healthcheck.* labels")
        check(Healthcheck, hc, "healthcheck")
        out["healthcheck"] = hc
    if "network.egress" in found:
        net = {"mode": "allowlist", "egress": found["network.egress"][1]}
        check(Network, net, "network")
        out["network"] = net
    return out
