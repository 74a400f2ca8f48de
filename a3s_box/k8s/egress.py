"""A pod's egress allow-list and secrets, from its annotations (sans-IO).

    metadata:
      annotations:
        a3s.dev/network: |          # a Boxfile box's `network:`, ports aside (hostPort is the pod's)
          mode: allowlist
          egress: [api.openai.com, "*.pypi.org"]
        a3s.dev/secrets: |          # container variables that hold secrets -> their hosts
          OPENAI_API_KEY: [api.openai.com]

containerd passes a pod's annotations to its runtime only where its config lists them
(`pod_annotations = ["a3s.dev/*"]` in the runtime's section, as docs/kubernetes.md shows).
An annotated pod's VM is plugged into its network namespace routed (network/podnet.py):
every flow it starts meets the host's egress proxy under this policy, as a Boxfile box's
flows do. A variable named in a3s.dev/secrets gets a placeholder in every container and
exec of the pod; its value (the container spec's, so a Kubernetes Secret given as env
works unchanged) reaches the proxy only, which puts it into requests to its hosts.

Threat: the pod's own spec is the cluster user's, not hostile; what is hostile is the
code in the pod, which must not reach other names or read the values. A malformed or
contradictory annotation therefore fails the pod (PodEgressError naming the annotation
and the field) rather than running it with less confinement than asked for.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import yaml  # type: ignore[import-untyped,unused-ignore]  # types-PyYAML is optional

from a3s_box.network.policy import NetworkPolicy, RuleError
from a3s_box.network.secrets import new_placeholder, secret_endpoint, secret_host_problem

NETWORK_ANNOTATION = "a3s.dev/network"
SECRETS_ANNOTATION = "a3s.dev/secrets"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class PodEgressError(ValueError):
    """An annotation that cannot be honoured: the pod must not start."""


@dataclass(frozen=True)
class PodEgress:
    policy: NetworkPolicy
    secret_hosts: dict[str, tuple[str, ...]]  # variable name -> HOST[:PORT] it may reach

    def placeholders(self) -> dict[str, str]:
        """A fresh placeholder per secret variable (one set per pod)."""
        return {name: new_placeholder(name) for name in sorted(self.secret_hosts)}


def _yaml(annotations: dict[str, str], key: str) -> Any:
    try:
        return yaml.safe_load(annotations[key])
    except yaml.YAMLError as e:
        raise PodEgressError(f"annotation {key}: not YAML ({str(e).splitlines()[0]})") from None


def _policy(data: Any) -> NetworkPolicy:
    """A Boxfile box's `network:` (mode allowlist or public, egress, deny, hosts)."""
    where = f"annotation {NETWORK_ANNOTATION}"
    if not isinstance(data, dict):
        raise PodEgressError(f"{where}: must be a mapping (mode, egress, deny, hosts)")
    if "ports" in data:
        raise PodEgressError(f"{where}: ports: a pod publishes ports with hostPort")
    if unknown := sorted(str(k) for k in data if k not in ("mode", "egress", "deny", "hosts")):
        raise PodEgressError(f"{where}: {unknown[0]}: not a field (mode, egress, deny, hosts)")
    mode = data.get("mode", "allowlist")
    if mode == "none":
        raise PodEgressError(f"{where}: mode none: a pod always has its network; "
                             "`mode: allowlist` with no egress refuses every destination")
    if mode not in ("allowlist", "public"):
        raise PodEgressError(f"{where}: mode: must be allowlist or public")
    for key in ("egress", "deny"):
        if not isinstance(data.get(key, []), list) or not all(isinstance(r, str) for r in data.get(key, [])):
            raise PodEgressError(f"{where}: {key}: must be a list of HOST[:PORT]")
    if mode != "allowlist" and data.get("egress"):
        raise PodEgressError(f"{where}: egress lists destinations, but mode is {mode}: use mode: allowlist")
    hosts = data.get("hosts", {})
    if not isinstance(hosts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in hosts.items()):
        raise PodEgressError(f"{where}: hosts: must map names to IPv4 addresses")
    try:
        return NetworkPolicy.from_json({**data, "mode": mode})
    except (RuleError, ValueError) as e:
        raise PodEgressError(f"{where}: {e}") from None


def pod_egress(annotations: dict[str, str]) -> PodEgress | None:
    """The pod's egress, or None when it has no a3s.dev/network annotation (its VM then
    has the pod's interface as it is, as any pod's container has)."""
    if NETWORK_ANNOTATION not in annotations:
        if SECRETS_ANNOTATION in annotations:
            raise PodEgressError(f"annotation {SECRETS_ANNOTATION} needs {NETWORK_ANNOTATION}: secrets are "
                                 "put in by the egress proxy, which only an allow-listed pod goes through")
        return None
    policy = _policy(_yaml(annotations, NETWORK_ANNOTATION))
    secret_hosts: dict[str, tuple[str, ...]] = {}
    if SECRETS_ANNOTATION in annotations:
        secrets = _yaml(annotations, SECRETS_ANNOTATION)
        if not isinstance(secrets, dict):
            raise PodEgressError(f"annotation {SECRETS_ANNOTATION}: must be a mapping of variable names "
                                 "to the hosts their value may reach")
        for name, hosts in sorted(secrets.items(), key=lambda kv: str(kv[0])):
            where = f"annotation {SECRETS_ANNOTATION}: {name}"
            if not isinstance(name, str) or not _NAME.match(name):
                raise PodEgressError(f"{where}: not an environment variable's name")
            if isinstance(hosts, str):
                hosts = [hosts]
            if not isinstance(hosts, list) or not all(isinstance(h, str) for h in hosts):
                raise PodEgressError(f"{where}: must be a list of HOST[:PORT]")
            if not hosts:
                raise PodEgressError(f"{where}: names no host")
            for h in hosts:
                if (problem := secret_host_problem(h)) is not None:
                    raise PodEgressError(f"{where}: {problem}")
                host, port = secret_endpoint(h)
                if not policy.allows_name(host, port):
                    raise PodEgressError(f"{where}: {h} is not allowed by {NETWORK_ANNOTATION}")
            secret_hosts[name] = tuple(hosts)
    return PodEgress(policy, secret_hosts)
