"""The Boxfile: loading, validation with located errors, and the v1 models."""
from __future__ import annotations

from a3s_box.boxfile.loader import load
from a3s_box.boxfile.model import Boxfile, BoxDef, ImageDef, PoolDef

__all__ = ["load", "Boxfile", "BoxDef", "ImageDef", "PoolDef"]
