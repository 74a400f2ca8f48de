"""The public API is exactly what __all__ says, and every name in it resolves."""
from __future__ import annotations

import a3s_box


def test_every_exported_name_resolves() -> None:
    for name in a3s_box.__all__:
        assert getattr(a3s_box, name) is not None, name


def test_public_classes_say_they_are_public() -> None:
    for name in a3s_box.__all__:
        obj = getattr(a3s_box, name)
        if isinstance(obj, type):
            assert obj.__module__.startswith("a3s_box."), name
            assert not obj.__module__.split(".")[-1].startswith("_"), name


def test_unknown_names_raise_attribute_error() -> None:
    try:
        a3s_box.NoSuchThing  # noqa: B018 - mypy allows it: the module's __getattr__ answers any name
    except AttributeError as e:
        assert "NoSuchThing" in str(e)
    else:
        raise AssertionError("expected AttributeError")
