"""`python -m a3s_box.api.openapi > schema/openapi.json`: the API's OpenAPI document,
generated from its models (a test keeps the committed copy equal to the served one)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def document() -> dict[str, object]:
    from a3s_box.api.app import create_app

    return create_app(Path("/nonexistent-home")).openapi()


def text() -> str:
    return json.dumps(document(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(text())
