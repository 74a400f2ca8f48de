"""The JSON bodies of E2B's REST API that a3s-box serves, as E2B's OpenAPI document
(spec/openapi.yml of e2b-dev/E2B) names them: camelCase on the wire."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

ENVD_VERSION = "0.5.7"  # the envd features served: stdin, default user, octet-stream upload
CLIENT_ID = "a3s-box"
DEFAULT_TIMEOUT = 300  # seconds: what the SDKs ask for when not told


def wire_name(field: str) -> str:
    """E2B's JSON name for a field: camelCase, with its spellings of ID and MB."""
    return re.sub(r"Id$", "ID", to_camel(field)).replace("Mb", "MB")


class _Wire(BaseModel):
    model_config = ConfigDict(alias_generator=wire_name, populate_by_name=True, extra="ignore")


class NetworkConfig(_Wire):
    allow_public_traffic: bool = True
    allow_out: list[str] | None = None
    deny_out: list[str] | None = None


class NewSandbox(_Wire):
    template_id: str
    timeout: Annotated[int, Field(ge=0)] = 15
    auto_pause: bool = False
    secure: bool | None = None
    allow_internet_access: Annotated[bool | None, Field(alias="allow_internet_access")] = None
    network: NetworkConfig | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    env_vars: dict[str, str] = Field(default_factory=dict)
    mcp: dict[str, Any] | None = None
    volume_mounts: list[dict[str, Any]] | None = None


class Sandbox(_Wire):
    template_id: str
    sandbox_id: str
    alias: str | None = None
    client_id: str = CLIENT_ID
    envd_version: str = ENVD_VERSION
    envd_access_token: str | None = None
    traffic_access_token: str | None = None
    domain: str | None = None


class ListedSandbox(_Wire):
    template_id: str
    alias: str | None = None
    sandbox_id: str
    client_id: str = CLIENT_ID
    started_at: str
    end_at: str
    cpu_count: int
    memory_mb: int
    disk_size_mb: int
    metadata: dict[str, str] = Field(default_factory=dict)
    state: Literal["running", "paused"]
    envd_version: str = ENVD_VERSION


class SandboxDetail(ListedSandbox):
    envd_access_token: str | None = None
    domain: str | None = None
    lifecycle: dict[str, Any] | None = None


class TimeoutRequest(_Wire):
    timeout: int = Field(ge=0)


class RefreshRequest(_Wire):
    duration: Annotated[int, Field(ge=0, le=3600)] = 0


class ConnectRequest(_Wire):
    timeout: Annotated[int | None, Field(ge=0)] = None  # None: v2's default, DEFAULT_TIMEOUT


class ResumeRequest(_Wire):
    timeout: Annotated[int, Field(ge=0)] = 15
    auto_pause: bool | None = None


class ForkRequest(_Wire):
    count: Annotated[int, Field(ge=1, le=16)] = 1  # E2B allows 100; each is a VM here
    timeout: Annotated[int | None, Field(ge=0)] = None

