"""The CRI plugin's annotations on a bundle (its config.json), and from them the pod
sandbox a container belongs to: which shim daemon serves it (`shim start`), which VM
it runs in (the task service's Create), what `shim delete` reaps.

Apart from the task service so that `shim start`, run once per container, reads them
without loading Task or protobuf.
"""
from __future__ import annotations

import json
from pathlib import Path

CONTAINER_TYPE = "io.kubernetes.cri.container-type"  # "sandbox" or "container"
SANDBOX_ID = "io.kubernetes.cri.sandbox-id"
# a pod's: "snapshot" (the default: its VM a clone of a template of its image and size
# where it can be) or "cold" (always booted), as a Boxfile box's `boot:`
BOOT = "a3s.dev/boot"
BOOTS = ("snapshot", "cold")


def pod_boot(spec_annotations: dict[str, str]) -> str:
    """The pod's a3s.dev/boot; ValueError naming the annotation for any other value."""
    boot = spec_annotations.get(BOOT, "snapshot").strip()
    if boot not in BOOTS:
        raise ValueError(f"annotation {BOOT}: {boot!r} is not one of {', '.join(BOOTS)}")
    return boot


def pod_of(spec_annotations: dict[str, str], container_id: str) -> str:
    """The pod a container belongs to: the CRI plugin's sandbox id, or its own id."""
    if spec_annotations.get(CONTAINER_TYPE) == "container" and spec_annotations.get(SANDBOX_ID):
        return spec_annotations[SANDBOX_ID]
    return container_id


def read_annotations(bundle: Path) -> dict[str, str]:
    try:
        spec = json.loads((bundle / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in (spec.get("annotations") or {}).items()}
