"""The Boxfile v1 models: the contract of the file format, and the source of the JSON Schema.

Field names, descriptions, defaults and examples here are what users read in their
editor (through schema/boxfile.schema.json) and in docs/boxfile-reference.md.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field,
                      WithJsonSchema, field_validator, model_validator)
from pydantic.json_schema import SkipJsonSchema

from a3s_box.drivers.registry import AUTO, NAMES as DRIVER_NAMES
from a3s_box.units import DURATION_PATTERN, SIZE_PATTERN, parse_duration, parse_size
from a3s_box.network.policy import (Mode as NetworkMode, NetworkPolicy, RuleError, parse_destination,
                                    parse_host_ip, parse_published)
from a3s_box.network.secrets import secret_host_problem

API_VERSION = "box.a3s.dev/v1"
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"
NAMESPACE_KINDS = ("mount", "pid", "ipc", "uts", "net")
MIN_MEMORY = 64 << 20
MAX_MEMORY = 1 << 40  # a typo guard (1Ti), far above any host this runs on


def _min_memory(v: int) -> int:
    if v < MIN_MEMORY:
        raise ValueError("must be at least 64Mi (the guest kernel and init need it)")
    if v > MAX_MEMORY:
        raise ValueError("must be at most 1Ti")
    return v


Name = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=63)]


def _known_driver(v: str) -> str:
    if v != AUTO and v not in DRIVER_NAMES:
        raise ValueError(f"must be one of: {', '.join((AUTO, *DRIVER_NAMES))}, not {v!r}")
    return v


# The names come from the driver registry: a new driver is known here without an edit.
DriverName = Annotated[str, Field(json_schema_extra={"enum": [AUTO, *DRIVER_NAMES]}),
                       AfterValidator(_known_driver)]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    WithJsonSchema({"anyOf": [{"type": "integer", "minimum": 0},
                              {"type": "string", "pattern": SIZE_PATTERN}]}),
]
Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    WithJsonSchema({"anyOf": [{"type": "number", "minimum": 0},
                              {"type": "string", "pattern": DURATION_PATTERN}]}),
]
def _not_bool(v: Any) -> Any:
    # pydantic reads true as 1; in a Boxfile that is a mistake, not a count. Strings of
    # digits stay accepted: that is what `vcpus: ${CPUS}` becomes.
    if isinstance(v, bool):
        raise ValueError(f"must be a whole number, not {str(v).lower()}")
    return v


Whole = Annotated[int, BeforeValidator(_not_bool)]
Command = Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)]
Isolate = list[Literal["mount", "pid", "ipc", "uts", "net"]]


def _agent_isolation() -> Isolate:
    return ["mount", "pid", "ipc", "uts"]


def _business_isolation() -> Isolate:
    return ["mount", "pid", "ipc", "uts", "net"]


def _stringify_env(v: Any) -> Any:
    """Env values may be written as YAML numbers or booleans; the guest gets strings."""
    if isinstance(v, dict):
        return {k: (str(x).lower() if isinstance(x, bool) else str(x))
                if isinstance(x, (int, float, bool)) else x for k, x in v.items()}
    return v


Env = Annotated[
    dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], str],
    BeforeValidator(_stringify_env),
    WithJsonSchema({
        "type": "object",
        "propertyNames": {"pattern": r"^[A-Za-z_][A-Za-z0-9_]*$"},
        "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}]},
    }),
]


def _unique(v: list[str]) -> list[str]:
    dupes = sorted({x for x in v if v.count(x) > 1})
    if dupes:
        raise ValueError(f"lists {', '.join(dupes)} more than once")
    return v


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ImageDef(_Model):
    """Where an image comes from: exactly one of `ref`, `path` and `build`."""

    model_config = ConfigDict(json_schema_extra={"oneOf": [
        # A key given as null counts as absent, as it does for the loader.
        {"required": ["ref"], "properties": {"ref": {"type": "string"}}},
        {"required": ["path"], "properties": {"path": {"type": "string"}}},
        {"required": ["build"], "properties": {"build": {"type": "object"}}},
    ]})

    ref: str | None = Field(None, min_length=1, description=(
        "An OCI image reference: `host[:port]/repo:tag`, `repo@sha256:...`, or a Docker Hub "
        "short name (`busybox` means `docker.io/library/busybox:latest`)."),
        examples=["localhost:5000/a3s/busybox:1.35", "docker.io/library/alpine:3.20"])
    path: Path | None = Field(None, description=(
        "A local OCI image layout folder or a `docker save` tarball, relative to the Boxfile's folder."),
        examples=["./images/tools", "./build/agent.tar"])

    build: "BuildDef | None" = Field(None, description=(
        "Build the image from a Dockerfile, each RUN in a microVM (compose's `build:`)."),
        examples=[{"context": "./agent", "dockerfile": "Dockerfile", "args": {"V": "1"}, "target": "run"}])

    @model_validator(mode="after")
    def _exactly_one(self) -> "ImageDef":
        if sum(x is not None for x in (self.ref, self.path, self.build)) != 1:
            raise ValueError("give exactly one of `ref` (a registry reference), `path` (a local image) "
                             "and `build` (a Dockerfile to build)")
        return self


class Resources(_Model):
    """The VM's size."""

    vcpus: Whole = Field(1, ge=1, le=64, description="Virtual CPUs of the box's VM.", examples=[1, 2])
    memory: Annotated[Size, AfterValidator(_min_memory), WithJsonSchema({"anyOf": [
        {"type": "integer", "minimum": MIN_MEMORY, "maximum": MAX_MEMORY}, {"type": "string", "pattern": SIZE_PATTERN}]})] = Field(
        "256Mi", validate_default=True, description="Memory of the box's VM: a number of bytes or a size with "
        "Ki/Mi/Gi (or K/M/G). At least 64Mi.", examples=["128Mi", "1Gi"])
    disk: Size | None = Field(None, description=(
        "Size of the box's root disk; the guest grows its root file system to fit at boot "
        "(default: the image's content plus 1Gi, at least 1Gi). The host refuses a box whose "
        "disk, with what its other boxes may still write, does not fit its free space."),
        examples=["20Gi"])

    @field_validator("disk")
    @classmethod
    def _disk_bounds(cls, v: int | None) -> int | None:
        if v is not None and not (1 << 30) <= v <= (1 << 40):
            raise ValueError("must be between 1Gi and 1Ti")
        return v


class Logging(_Model):
    """How much log the host keeps for the box (its console, agent output, network log)."""

    max_size: Size = Field("10Mi", validate_default=True, description=(
        "Rotate a log file when it reaches this size."), examples=["1Mi"])
    max_files: Whole = Field(5, ge=1, le=100, description=(
        "Files kept per log, the current one included (1: truncate at max_size)."), examples=[2])

    @field_validator("max_size")
    @classmethod
    def _size_bounds(cls, v: int) -> int:
        if not (4 << 10) <= v <= (1 << 30):
            raise ValueError("must be between 4Ki and 1Gi")
        return v


class AgentNamespace(_Model):
    """The agent: the box's main process, in its own Linux namespaces."""

    command: Command | None = Field(None, description=(
        "The agent's command line (argv). Absent: the image's Entrypoint + Cmd."),
        examples=[["/bin/sh", "-c", "exec sleep 3600"]])
    isolate: Annotated[Isolate, AfterValidator(_unique)] = Field(
        default_factory=_agent_isolation,
        json_schema_extra={"uniqueItems": True, "default": ["mount", "pid", "ipc", "uts"]},
        description="Namespaces the agent gets of its own.", examples=[["mount", "pid", "ipc", "uts"]])
    env: Env = Field(default_factory=dict, description="Environment added over the box's `env`.",
                     examples=[{"AGENT_MODE": "coding"}])
    workdir: str | None = Field(None, min_length=1, description=(
        "Working folder of the agent. Absent: the image's WorkingDir, else /."), examples=["/app"])
    restart: Literal["always", "on-failure", "never"] = Field(
        "always", description="What the guest init does when the agent exits "
        "(restarts back off exponentially).", examples=["on-failure"])


def _shareable(path: str) -> str:
    top = path.strip("/").split("/")[0]
    if top in ("tmp", "dev", "proc") or not top:
        raise ValueError(f"{path}: business code has its own /, /tmp, /dev and /proc: share a path "
                         "elsewhere (e.g. /workspace)")
    return path


class BusinessNamespace(_Model):
    """Where code launched by the agent runs: nested inside the agent's namespaces,
    unable to see or signal the agent's processes (`nsexec -- CMD` inside the box)."""

    # A str, not a Literal, so that a wrong parent gets the "unknown namespace" check's
    # message; the schema still lists the one choice there is.
    parent: str = Field("agent", min_length=1, description="The namespace this one nests in "
                        "(only `agent` for now).", examples=["agent"], json_schema_extra={"enum": ["agent"]})
    isolate: Annotated[Isolate, AfterValidator(_unique)] = Field(
        default_factory=_business_isolation,
        json_schema_extra={"uniqueItems": True, "default": ["mount", "pid", "ipc", "uts", "net"]},
        description="Namespaces business code gets of its own.",
        examples=[["mount", "pid", "ipc", "uts", "net"]])
    user: str = Field("65534:65534", pattern=r"^[0-9]{1,10}(:[0-9]{1,10})?$", description=(
        "The numeric uid[:gid] business code runs as (default nobody). With uid 0 it is root "
        "without any capability."), examples=["1000:1000"])
    share: Annotated[list[Annotated[str, Field(pattern=r"^/"), AfterValidator(_shareable)]],
                     AfterValidator(_unique)] = Field(
        default_factory=list, description=(
            "Absolute paths of the agent's tree that business code may write (each keeps its "
            "owner and modes; everything else it sees read-only; /tmp, /dev and /proc are its "
            "own, so not below those)."),
        examples=[["/workspace"]])
    memory: Size | None = Field(None, description=(
        "Memory business code may use (its own cgroup, below the agent's limit). Default: "
        "three quarters of what the agent's namespaces may use."), examples=["128Mi"])
    pids: Whole = Field(2048, ge=1, le=1 << 22, description=(
        "Processes business code may have at once (its own cgroup, below the agent's 4096)."),
        examples=[256])
    privileged: bool = Field(False, description=(
        "Run business code as root with every capability on the agent's writable tree, as "
        "before containment (unsafe: business and agent can then tamper with each other)."),
        examples=[False])


class Namespaces(_Model):
    """The Linux namespaces inside the box's VM."""

    agent: AgentNamespace = Field(default_factory=lambda: AgentNamespace.model_validate({}),
                                  description="The agent process and its isolation.",
                                  examples=[{"command": ["/bin/sh", "-c", "exec sleep 3600"],
                                             "isolate": ["mount", "pid", "ipc", "uts"]}])
    business: BusinessNamespace | None = Field(
        None, description="A further isolated namespace for code the agent launches.",
        examples=[{"parent": "agent", "isolate": ["mount", "pid", "ipc", "uts", "net"]}])


class Dependency(_Model):
    """How far a dependency must have come before this box starts."""

    condition: Literal["started", "healthy", "completed"] = Field(
        "started", description="`started`: its agent runs; `healthy`: its healthcheck passes; "
        "`completed`: its agent exited with 0.", examples=["healthy"])


def _depends_on_canonical(v: Any) -> Any:
    """The short form (a list of names) becomes the long form (name -> condition)."""
    if isinstance(v, list):
        if not all(isinstance(n, str) for n in v):
            raise ValueError("must be a list of box names, or a mapping of box name to {condition: ...}")
        return {name: {} for name in _unique(v)}
    return v


DependsOn = Annotated[
    dict[Name, Dependency],
    BeforeValidator(_depends_on_canonical, json_schema_input_type=list[Name] | dict[Name, Dependency]),
]


class Healthcheck(_Model):
    """A command run inside the box (agent namespace) to tell whether it is healthy."""

    command: Command = Field(description="The check's argv; exit 0 means healthy.",
                             examples=[["/bin/sh", "-c", "test -e /tmp/ready"]])
    interval: Duration = Field("5s", validate_default=True, description="Time between checks.", examples=["5s"])
    timeout: Duration = Field("5s", validate_default=True, description="A check running longer fails.", examples=["3s"])
    retries: Whole = Field(3, ge=1, description="Failures in a row that make the box unhealthy.",
                         examples=[3])
    start_period: Duration = Field("0s", validate_default=True, description="Failures in this first period do not count.",
                                   examples=["10s"])


class Lifetime(_Model):
    """Limits enforced by whatever keeps pools filled (`box apply --watch`, `box pool fill`)."""

    idle_timeout: Duration | None = Field(None, description="End a leased box idle this long.",
                                          examples=["10m"])
    max_duration: Duration | None = Field(None, description="End a leased box this long after it "
                                          "was handed out.", examples=["1h"])


class Timeouts(_Model):
    """How long a3s-box waits."""

    ready: Duration = Field("120s", validate_default=True, description="Boot until the agent runs (and each depends_on "
                            "condition wait).", examples=["60s"])


def _checked(parse: Any) -> Any:
    def check(v: Any) -> Any:
        if isinstance(v, str):
            try:
                parse(v)
            except RuleError as e:
                raise ValueError(str(e)) from None
        return v
    return check


Destination = Annotated[str, Field(min_length=1), AfterValidator(_checked(parse_destination))]
PublishedPort = Annotated[str, Field(min_length=1), AfterValidator(_checked(parse_published))]
HostAddress = Annotated[str, AfterValidator(_checked(parse_host_ip))]


class Network(_Model):
    """What the box's network reaches. Everything goes through a proxy on the host that
    decides per connection; the box never gets more network than declared."""

    mode: NetworkMode = Field(
        "none", description="`none`: no network at all; `allowlist`: only `egress`; "
        "`public`: the internet minus `deny`, never private, loopback or link-local addresses.",
        examples=["allowlist"])
    egress: list[Destination] = Field(default_factory=list, description=(
        "allowlist: the only destinations, each `HOST[:PORT]`: a name, `*.domain` (its "
        "subdomains), an IPv4 address or CIDR; PORT a number or `*` (default: 443 and 80)."),
        examples=[["api.openai.com", "*.pypi.org", "github.com:22", "203.0.113.0/24:5432"]])
    deny: list[Destination] = Field(default_factory=list, description=(
        "Destinations refused in any mode (checked before `egress`), same form as `egress`."),
        examples=[["169.254.169.254", "*.internal.example.com"]])
    hosts: dict[str, HostAddress] = Field(default_factory=dict, description=(
        "Name overrides (compose's extra_hosts): the proxy dials this IPv4 address for the "
        "name, even a private one. The name must still be allowed."),
        examples=[{"registry.internal": "10.1.2.3"}])
    ports: list[PublishedPort] = Field(default_factory=list, description=(
        "Box TCP ports published on the host: `[HOST_IP:]HOST_PORT:BOX_PORT` "
        "(HOST_IP defaults to 127.0.0.1)."), examples=[["127.0.0.1:8080:80", "9000:9000"]])

    @field_validator("hosts")
    @classmethod
    def _host_names(cls, v: dict[str, str]) -> dict[str, str]:
        for name in v:
            try:
                rule = parse_destination(name)
            except RuleError as e:
                raise ValueError(str(e)) from None
            if rule.wildcard or rule.network is not None or ":" in name:
                raise ValueError(f"{name!r}: a hosts: key is one host name (no wildcard, address or port)")
        return v

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def policy(self) -> NetworkPolicy:
        """The one typed value the rest of a3s-box passes on, down to the proxy."""
        return NetworkPolicy.from_json(self.model_dump())

    @model_validator(mode="after")
    def _coherent(self) -> "Network":
        if self.mode != "allowlist" and self.egress:
            raise ValueError(f"egress lists destinations, but mode is {self.mode}: "
                             "use mode: allowlist (or drop egress)")
        if self.mode == "none" and (self.ports or self.hosts or self.deny):
            raise ValueError("mode none has no network: ports, hosts and deny need "
                             "mode allowlist or public")
        return self

    @field_validator("ports")
    @classmethod
    def _distinct_ports(cls, v: list[str]) -> list[str]:
        seen: dict[str, str] = {}
        for p in v:
            pub = parse_published(p)
            key = f"{pub.host_ip}:{pub.host_port}"
            if key in seen:
                raise ValueError(f"{seen[key]!r} and {p!r} both publish {key}")
            seen[key] = p
        return v


def _build_network() -> "Network":
    return Network.model_validate({"mode": "public"})


class BuildDef(_Model):
    """An image built from a Dockerfile. Every RUN runs in a microVM booted from the
    layers so far, reaching only what `network` allows."""

    context: Path = Field(description=(
        "The build context: a folder, relative to the Boxfile. COPY and ADD read from it "
        "(minus what its .dockerignore excludes)."), examples=["./agent"])
    dockerfile: str = Field("Dockerfile", min_length=1, description=(
        "The Dockerfile, relative to the context."), examples=["Dockerfile", "docker/agent.Dockerfile"])
    args: Env = Field(default_factory=dict, description="Build arguments: values of the Dockerfile's ARGs.",
                      examples=[{"VERSION": "1.2"}])
    target: str | None = Field(None, min_length=1, description=(
        "The stage to build (`FROM ... AS NAME`); default: the last."), examples=["run"])
    network: Network = Field(default_factory=_build_network, description=(
        "What RUN steps reach, as a box's `network` (default: `public`, the internet minus "
        "private, loopback and link-local addresses; `none` for no network)."),
        examples=[{"mode": "none"}, {"mode": "allowlist", "egress": ["*.pypi.org", "files.pythonhosted.org"]}])

    @field_validator("network")
    @classmethod
    def _no_ports(cls, v: "Network") -> "Network":
        if v.ports:
            raise ValueError("a build publishes no ports: drop ports")
        return v


ImageDef.model_rebuild()


class SecretDef(_Model):
    """A secret the box uses without holding it: its environment has a placeholder, and
    the host's proxy puts the value into requests to `hosts` only (over TLS)."""

    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = Field(description=(
        "The host environment variable holding the value, read when the box is created "
        "(`box apply` fails if it is unset)."), examples=["OPENAI_API_KEY"])
    hosts: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1, description=(
        "`HOST[:PORT]` (port default 443): the TLS destinations whose HTTP requests get the "
        "value in place of the placeholder (in header values and the request target). "
        "Each must be allowed by the box's network."), examples=[["api.openai.com"]])

    @field_validator("hosts")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        for h in v:
            if (problem := secret_host_problem(h)) is not None:
                raise ValueError(problem)
        return v


_VOLUME_KINDS = ("bind", "volume", "tmpfs")
_RESERVED_TARGETS = ("/proc", "/sys", "/dev", "/.a3s")


def _volume_canonical(v: Any) -> Any:
    """Compose's short form `SOURCE:TARGET[:ro|rw]` becomes the long form: a SOURCE that
    starts with `.`, `/` or `~` is a host folder (bind), anything else a named volume."""
    if not isinstance(v, str):
        return v
    parts = v.split(":")
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ValueError(f"{v!r}: want SOURCE:TARGET[:ro], e.g. ./src:/workspace or cache:/root/.cache")
    mode = parts[2] if len(parts) == 3 else "rw"
    if mode not in ("ro", "rw"):
        raise ValueError(f"{v!r}: the mode after the target is ro or rw, not {mode!r}")
    kind = "bind" if parts[0].startswith((".", "/", "~")) else "volume"
    return {"type": kind, "source": parts[0], "target": parts[1], "read_only": mode == "ro"}


class VolumeMount(_Model):
    """A folder, named volume or tmpfs mounted into the box (compose's long form)."""

    type: Literal["bind", "volume", "tmpfs"] = Field(description=(
        "`bind`: a host folder (virtio-fs); `volume`: a named volume from `volumes:` (its own "
        "disk, kept across recreate); `tmpfs`: memory, gone with the VM."), examples=["bind"])
    source: str | None = Field(None, min_length=1, description=(
        "bind: the host folder, relative to the Boxfile's folder; volume: the volume's name; "
        "tmpfs: none."), examples=["./src", "cache"])
    target: str = Field(min_length=1, description="Where it appears in the box: an absolute path.",
                        examples=["/workspace"])
    read_only: bool = Field(False, description=(
        "Mounted read-only; for binds enforced on the host (the guest cannot write through "
        "it even as root)."), examples=[True])
    size: Size | None = Field(None, description="tmpfs: its size limit (default: half the box's memory).",
                              examples=["256Mi"])

    @field_validator("target")
    @classmethod
    def _absolute_target(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError(f"{v!r}: a target must be an absolute path in the box, e.g. /workspace")
        norm = "/" + "/".join(p for p in v.split("/") if p and p != ".")
        if ".." in norm.split("/"):
            raise ValueError(f"{v!r}: a target may not contain '..'")
        if norm == "/":
            raise ValueError("a volume cannot be mounted on / (the box's own root)")
        if any(norm == r or norm.startswith(r + "/") for r in _RESERVED_TARGETS):
            raise ValueError(f"{v!r}: {', '.join(_RESERVED_TARGETS)} belong to the guest system")
        return norm

    @model_validator(mode="after")
    def _fits_type(self) -> "VolumeMount":
        if self.type == "tmpfs" and self.source is not None:
            raise ValueError("a tmpfs has no source")
        if self.type != "tmpfs" and self.source is None:
            raise ValueError(f"a {self.type} volume needs a source")
        if self.type != "tmpfs" and self.size is not None:
            raise ValueError("size is for tmpfs; a named volume's size is set under volumes:")
        if self.type == "volume" and self.source is not None and not re.fullmatch(NAME_PATTERN, self.source):
            raise ValueError(f"{self.source!r} is not a volume name (a host folder starts with ./ or /)")
        return self


Volumes = Annotated[
    list[Annotated[VolumeMount, BeforeValidator(_volume_canonical,
                                                json_schema_input_type=str | VolumeMount)]],
    Field(description="Mounted volumes."),
]


def _min_volume(v: int) -> int:
    if v < 16 << 20:
        raise ValueError("must be at least 16Mi (an ext4 file system needs room)")
    return v


class VolumeDef(_Model):
    """A named volume: a disk of its own in the a3s-box home, kept across recreate and
    delete until `box volume rm` (or `box delete --volumes`)."""

    size: Annotated[Size, AfterValidator(_min_volume)] = Field(
        "1Gi", validate_default=True, description="Its capacity (the disk is sparse: it uses what is written).",
        examples=["2Gi"])


class BoxDef(_Model):
    """One microVM: an image, its size, its environment, and the namespaces inside it."""

    image: str = Field(min_length=1, description=(
        "A name from `images:`, or a direct OCI reference with a tag, digest or registry "
        "(e.g. `busybox:1.36`)."), examples=["base", "localhost:5000/a3s/busybox:1.35"])
    resources: Resources = Field(default_factory=lambda: Resources.model_validate({}), description="vcpus and memory.",
                                 examples=[{"vcpus": 2, "memory": "512Mi"}])
    env: Env = Field(default_factory=dict, description="Environment of every process in the box "
                     "(over the image's Env).", examples=[{"LOG_LEVEL": "info"}])
    namespaces: Namespaces = Field(default_factory=lambda: Namespaces.model_validate({}),
                                   description="The agent and business namespaces.",
                                   examples=[{"agent": {"command": ["/bin/sh", "-c", "exec sleep 3600"]},
                                              "business": {"parent": "agent"}}])
    depends_on: DependsOn = Field(default_factory=dict, description=(
        "Boxes that must be up first: a list of names, or a mapping of name to "
        "`{condition: started|healthy|completed}`."), examples=[["db"], {"db": {"condition": "healthy"}}])
    healthcheck: Healthcheck | None = Field(None, description="How to tell the box is healthy.",
                                            examples=[{"command": ["/bin/sh", "-c", "test -e /tmp/ready"],
                                                       "interval": "5s", "retries": 3}])
    lifetime: Lifetime | None = Field(None, description="Lifetime limits of leased pool boxes.",
                                      examples=[{"idle_timeout": "10m", "max_duration": "1h"}])
    restart: Literal["always", "on-failure", "no"] = Field(
        "always", description=(
            "When the box's VM ends, `box serve` starts it again: always, only when it did not "
            "power off cleanly (`on-failure`), or never (`no`); with back-off (2s doubling to "
            "5m). A box stopped with `box stop` stays stopped. Changed in place."),
        examples=["on-failure"])
    driver: DriverName = Field(
        AUTO, description="The VMM: `auto` picks the first driver the host runs that can do what "
        "the box needs (libkrun for a box without network, volumes or a jailed VMM, else QEMU).",
        examples=["qemu"])
    hostname: Name | None = Field(None, description="The guest's hostname (default: the box name).",
                                  examples=["coder"])
    timeouts: Timeouts = Field(default_factory=lambda: Timeouts.model_validate({}),
                               description="Waits, each with its limit.", examples=[{"ready": "60s"}])
    network: Network = Field(default_factory=lambda: Network.model_validate({}), description=(
        "What the box's network reaches (default: no network)."),
        examples=[{"mode": "allowlist", "egress": ["api.openai.com", "*.pypi.org"],
                   "ports": ["127.0.0.1:8080:80"]}])
    boot: Literal["snapshot", "cold"] = Field("snapshot", description=(
        "`snapshot`: start as a clone of a template VM booted once for the same image, size "
        "and kernel (milliseconds instead of seconds; boxes with a network or volumes boot "
        "cold for now); `cold`: always boot."), examples=["cold"])
    logging: Logging = Field(default_factory=lambda: Logging.model_validate({}), description=(
        "Cap and rotation of the logs the host keeps for the box (kubelet's defaults)."),
        examples=[{"max_size": "1Mi", "max_files": 2}])
    security: Literal["strict", "relaxed"] = Field("strict", description=(
        "How the box's VMM (QEMU) and helpers are confined on the host: `strict` runs them "
        "as a uid of their own with no capabilities, in their own namespaces and root, under "
        "seccomp and in a cgroup with the box's limits, and refuses the box where this host "
        "lacks one of them (`box doctor` says which); `relaxed` runs with what the host "
        "allows and `box ps` says what is missing."), examples=["relaxed"])
    volumes: Volumes = Field(default_factory=list, description=(
        "Host folders, named volumes and tmpfs mounted into the box: compose's short form "
        "`SOURCE:TARGET[:ro]` or the long form."), examples=[["./src:/workspace", "cache:/root/.cache",
                                                           {"type": "tmpfs", "target": "/scratch", "size": "256Mi"}]])
    secrets: dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], SecretDef] = Field(
        default_factory=dict, description=(
            "Secrets by the environment variable name the box sees: it holds a placeholder, "
            "never the value."), examples=[{"OPENAI_API_KEY": {"env": "OPENAI_API_KEY",
                                                               "hosts": ["api.openai.com"]}}])


class PoolDef(_Model):
    """A warm pool: booted, idle boxes of a template, handed out with `box pool acquire`."""

    box: Name = Field(description="The template: a name from `boxes:`.", examples=["coder"])
    min_ready: Whole = Field(1, ge=0, description="Idle, booted boxes to keep ready (0 scales to zero).",
                           examples=[2])
    max: Whole = Field(4, ge=1, description="Most boxes of this pool at once, leased ones included.",
                     examples=[8])
    update: Literal["recreate", "on_replenish"] = Field(
        "recreate", description="When the template changes: replace idle boxes now (`recreate`) "
        "or only build new ones from it (`on_replenish`). Leased boxes are never touched.",
        examples=["on_replenish"])
    idle_timeout: Duration | None = Field(None, description="Idle boxes beyond min_ready are "
                                          "reclaimed after this (default 5m).", examples=["5m"])
    park: bool = Field(False, description=(
        "Keep idle members loaded but paused: a member restored from a snapshot costs almost "
        "no memory and no CPU until `acquire` resumes it and starts its agent (slower to "
        "acquire than an unparked member, which is already running). Members that boot "
        "cold are paused once booted."), examples=[True])

    @model_validator(mode="after")
    def _bounds(self) -> "PoolDef":
        if self.min_ready > self.max:
            raise ValueError(f"min_ready ({self.min_ready}) is greater than max ({self.max})")
        return self


class Boxfile(_Model):
    """A Boxfile: the images, boxes and warm pools a host should have."""

    api_version: Literal["box.a3s.dev/v1"] = Field(alias="apiVersion", description=(
        "The Boxfile format version."), examples=[API_VERSION])
    project: Name | None = Field(None, description=(
        "Project name: owns the boxes this file creates (default: the Boxfile's folder name)."),
        examples=["demo"])
    images: dict[Name, ImageDef] = Field(default_factory=dict, description="Images by name.",
                                         examples=[{"base": {"ref": "localhost:5000/a3s/busybox:1.35"}}])
    boxes: dict[Name, BoxDef] = Field(default_factory=dict, description="Boxes (microVMs) by name.",
                                      examples=[{"db": {"image": "base", "resources": {"memory": "128Mi"}}}])
    volumes: dict[Name, VolumeDef] = Field(default_factory=dict, description=(
        "Named volumes by name: disks kept across recreate and delete."), examples=[{"cache": {"size": "2Gi"}}])
    pools: dict[Name, PoolDef] = Field(default_factory=dict, description="Warm pools by name.",
                                       examples=[{"coders": {"box": "coder", "min_ready": 2, "max": 8}}])
    files: SkipJsonSchema[tuple[Path, ...]] = Field(default=(), exclude=True)

    @field_validator("images", "boxes", "pools", "volumes", mode="before")
    @classmethod
    def _null_is_empty(cls, v: Any) -> Any:
        return {} if v is None else v

    def image_of(self, box_name: str) -> tuple[str | None, ImageDef]:
        """The images: key a box uses (None for a direct reference) and its ImageDef."""
        image = self.boxes[box_name].image
        if image in self.images:
            return image, self.images[image]
        return None, ImageDef(ref=image, path=None, build=None)


def is_direct_reference(image: str) -> bool:
    """A bare word must name an entry of images:; anything with / : @ is a reference."""
    return any(c in image for c in "/:@")
