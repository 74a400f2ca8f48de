"""a3s-box: run AI agents inside hardware-isolated microVMs, declared in a Boxfile."""
from __future__ import annotations

__version__ = "0.1.0"
