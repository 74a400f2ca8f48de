"""The Boxfile: loading, validation with located errors, and the v1 models.

    load(files, environ=None) -> Boxfile      raises a3s_box.errors.BoxfileError
"""
from __future__ import annotations

from a3s_box.boxfile.loader import load
from a3s_box.boxfile.model import (AgentNamespace, BoxDef, Boxfile, BusinessNamespace, Dependency,
                                   Healthcheck, ImageDef, Lifetime, Namespaces, PoolDef, Resources,
                                   Timeouts)

__all__ = ["load", "Boxfile", "BoxDef", "ImageDef", "PoolDef", "Resources", "Namespaces",
           "AgentNamespace", "BusinessNamespace", "Dependency", "Healthcheck", "Lifetime", "Timeouts"]
