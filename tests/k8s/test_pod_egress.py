"""k8s/egress.py: a pod's allow-list and secret annotations (sans-IO, fuzzed)."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from a3s_box.k8s.egress import PodEgressError, pod_egress

NET = "a3s.dev/network"
SECRETS = "a3s.dev/secrets"


def test_no_annotation_no_egress() -> None:
    assert pod_egress({"other": "x"}) is None


def test_the_annotations_give_the_boxfile_policy_and_secret_hosts() -> None:
    egress = pod_egress({NET: "mode: allowlist\negress: [api.openai.com, '*.pypi.org', 'github.com:22']\n"
                              "deny: [169.254.169.254]\nhosts: {api.test: 127.0.0.1}\n",
                         SECRETS: "OPENAI_API_KEY: [api.openai.com]\nGH: github.com:22\n"})
    assert egress is not None
    assert egress.policy.to_json()["egress"] == ["api.openai.com", "*.pypi.org", "github.com:22"]
    assert str(egress.policy.hosts["api.test"]) == "127.0.0.1"
    assert egress.secret_hosts == {"GH": ("github.com:22",), "OPENAI_API_KEY": ("api.openai.com",)}
    first, second = egress.placeholders(), egress.placeholders()
    assert first["GH"].startswith("a3s-secret-gh-") and first != second  # fresh per pod


def test_json_works_too_and_mode_defaults_to_allowlist() -> None:
    egress = pod_egress({NET: '{"egress": ["api.test"]}'})
    assert egress is not None and egress.policy.mode == "allowlist"


@pytest.mark.parametrize("annotations, said", [
    ({NET: "mode: [x"}, "annotation a3s.dev/network: not YAML"),
    ({NET: "- api.test"}, "annotation a3s.dev/network: must be a mapping"),
    ({NET: "mode: none"}, "mode none: a pod always has its network"),
    ({NET: "mode: open"}, "mode: must be allowlist or public"),
    ({NET: "mode: public\negress: [a.test]"}, "egress lists destinations, but mode is public"),
    ({NET: "ports: ['8080:80']"}, "ports: a pod publishes ports with hostPort"),
    ({NET: "egres: [a.test]"}, "egres: not a field"),
    ({NET: "egress: [a.test:99999]"}, "annotation a3s.dev/network: "),
    ({NET: "egress: a.test"}, "egress: must be a list"),
    ({NET: "hosts: {a.test: not-an-ip}"}, "annotation a3s.dev/network: "),
    ({SECRETS: "T: [a.test]"}, "annotation a3s.dev/secrets needs a3s.dev/network"),
    ({NET: "egress: [a.test]", SECRETS: "T: [b.test]"}, "a3s.dev/secrets: T: b.test is not allowed by"),
    ({NET: "egress: [a.test]", SECRETS: "T: ['*.a.test']"}, "a3s.dev/secrets: T: '*.a.test': a secret's host"),
    ({NET: "egress: [a.test]", SECRETS: "1T: [a.test]"}, "a3s.dev/secrets: 1T: not an environment"),
    ({NET: "egress: [a.test]", SECRETS: "T: []"}, "a3s.dev/secrets: T: names no host"),
    ({NET: "egress: [a.test]", SECRETS: "[T]"}, "a3s.dev/secrets: must be a mapping"),
])
def test_an_annotation_it_cannot_honour_is_refused_naming_it(annotations: dict[str, str], said: str) -> None:
    with pytest.raises(PodEgressError) as e:
        pod_egress(annotations)
    assert said in str(e.value)


@settings(max_examples=300)
@given(st.dictionaries(st.sampled_from([NET, SECRETS, "x"]), st.text(max_size=80), max_size=3))
def test_whatever_the_annotations_say_gives_egress_none_or_a_pod_egress_error(annotations: dict[str, str]) -> None:
    try:
        pod_egress(annotations)
    except PodEgressError:
        pass


def test_the_example_pod_of_the_deploy_folder_is_one_this_runtime_honours() -> None:
    import yaml  # type: ignore[import-untyped,unused-ignore]

    from tests.e2e.conftest import ROOT

    pod = yaml.safe_load((ROOT / "deploy/kubernetes/example-pod.yaml").read_text())
    egress = pod_egress(pod["metadata"]["annotations"])
    assert egress is not None and egress.secret_hosts == {"OPENAI_API_KEY": ("api.openai.com",)}
    assert pod["spec"]["runtimeClassName"] == "a3sbox"
    assert egress.policy.allows_name("api.openai.com", 443) and not egress.policy.allows_name("example.com", 443)
