"""The API's Box is `box ps`'s BoxInfo: a field added to one and not the other would be
dropped from (or break) every box response."""
from __future__ import annotations

import dataclasses

from a3s_box.api import models
from a3s_box.orchestrator.host import BoxInfo


def test_the_api_box_has_exactly_the_fields_of_box_ps() -> None:
    assert set(models.Box.model_fields) == {f.name for f in dataclasses.fields(BoxInfo)}


def test_a_box_row_converts_without_loss() -> None:
    info = BoxInfo("id1", "proj", "web", "running", "qemu", "tcg", "img:1", 42, "", "none",
                   "cold (first boot)", "strict")
    assert models.Box(**info.to_json()).model_dump() == info.to_json()
