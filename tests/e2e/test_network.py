"""Box networking on real microVMs, attacked from inside the guest (root there).

"The internet" is an HTTP and an HTTPS server on the host's 127.0.0.1 (tests reach no
other address), with a test CA that the host side trusts through SSL_CERT_FILE; names
point at it with `hosts:`. Two boxes boot once for the whole module: `net`
(allowlist, a published port, a secret) and `sealed` (mode none).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import BoxCli, boxfile
from tests.network.conftest import Internet, internet  # noqa: F401 - the fixture
from tests.network.tools_image import build_tools_image

pytestmark = pytest.mark.vm
TOKEN = "sk-live-4242-never-in-the-guest"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _host_address() -> str | None:
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split()
    return next((a for a in out if "." in a and not a.startswith("127.")), None)


@pytest.fixture(scope="module")
def tools_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tools_image(tmp_path_factory.mktemp("tools") / "image")


@pytest.fixture(scope="module")
def net(box: BoxCli, tools_image: Path, internet: Internet,  # noqa: F811
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    box.env["SSL_CERT_FILE"] = str(internet.ca)  # the host side trusts "the internet"
    box.env["A3S_TEST_TOKEN"] = TOKEN
    pub = _free_port()
    h, s = internet.http_port, internet.https_port
    folder = tmp_path_factory.mktemp("net")
    f = boxfile(folder, tools_image, f"""boxes:
  net:
    image: hello
    resources: {{memory: 160Mi}}
    namespaces:
      agent: {{command: ["busybox", "httpd", "-f", "-p", "80", "-h", "/etc"]}}
    network:
      mode: allowlist
      egress: ["api.test:{h}", "api.test:{s}", "other.test:{s}"]
      hosts: {{api.test: 127.0.0.1, other.test: 127.0.0.1}}
      ports: ["127.0.0.1:{pub}:80"]
    secrets:
      TOKEN: {{env: A3S_TEST_TOKEN, hosts: ["api.test:{s}"]}}
  sealed:
    image: hello
    resources: {{memory: 128Mi}}
    namespaces:
      agent: {{command: ["/bin/sh", "-c", "exec sleep 2147483647"]}}
""")
    r = box("apply", "-f", str(f))
    assert r.code == 0, r.out + r.err
    yield {"file": f, "pub": pub, "http": h, "https": s}
    box("delete", "-f", str(f))


def _sh(box: BoxCli, script: str, name: str = "net") -> tuple[int, str, str]:
    r = box("exec", name, "--", "sh", "-c", script, timeout=120)
    return r.code, r.out, r.err


def test_an_allowed_name_is_reachable_and_the_policy_is_shown(box: BoxCli, net: dict[str, object],
                                                              internet: Internet) -> None:  # noqa: F811
    code, out, err = _sh(box, f"curl -sS -m 10 http://api.test:{net['http']}/hello")
    assert code == 0, err
    assert json.loads(out)["path"] == "/hello"
    ps = {b["name"]: b for b in box("ps", "-o", "json", check=True).json()}
    assert ps["net"]["network"].startswith("allowlist; api.test:") and ps["sealed"]["network"] == "none"
    inspect = box("inspect", "net", "-o", "json", check=True).json()
    assert inspect["secrets"] == ["TOKEN"] and TOKEN not in json.dumps(inspect)
    logs = box("logs", "--network", "net", check=True).out
    assert f"allow tcp  api.test:{net['http']} via 127.0.0.1" in logs


def test_other_names_raw_addresses_and_the_host_are_not_reachable(box: BoxCli, net: dict[str, object],
                                                                  internet: Internet) -> None:  # noqa: F811
    h = net["http"]
    before = len(internet.requests)
    code, out, _ = _sh(box, f"curl -sS -m 5 http://evil.test:{h}/x; echo rc=$?")
    assert "rc=6" in out  # our DNS does not resolve it
    code, out, _ = _sh(box, f"curl -fsS -m 5 http://10.0.2.2:{h}/x; echo rc=$?")
    assert "rc=0" not in out  # the gateway is the namespace's own loopback: nothing there
    host_ip = _host_address()
    if host_ip:
        code, out, _ = _sh(box, f"curl -fsS -m 5 http://{host_ip}:{h}/x; echo rc=$?")
        assert "rc=0" not in out
        denied = [json.loads(x) for x in (box.home / "boxes" / _box_id(box, "net") / "net" / "network.log")
                  .read_text().splitlines() if host_ip in x]
        assert denied and all(d["verdict"] == "deny" for d in denied)
    code, out, _ = _sh(box, f"curl -sS -m 5 http://other.test:{h}/x; echo rc=$?")
    assert "not in the allow-list" in out  # an allowed name, but not on that port
    assert len(internet.requests) == before  # nothing of it reached "the internet"


def test_mode_none_has_no_network_at_all(box: BoxCli, net: dict[str, object]) -> None:
    code, out, err = _sh(box, "cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; "
                              f"curl -fsS -m 5 http://api.test:{net['http']}/; echo rc=$?", name="sealed")
    lines = out.split()
    assert lines[0] == "lo" and "eth0" not in lines and "rc=0" not in out


def test_a_secret_never_enters_the_guest_but_reaches_its_host(box: BoxCli, net: dict[str, object],
                                                              internet: Internet) -> None:  # noqa: F811
    s = net["https"]
    # the environment holds a placeholder; no file or process in the guest holds the value
    code, out, _ = _sh(box, f"echo $TOKEN; env | grep -c '{TOKEN}'; "
                            f"grep -rl '{TOKEN}' /etc /.a3s /root /tmp /app 2>/dev/null | wc -l; "
                            f"cat /proc/*/environ 2>/dev/null | grep -c '{TOKEN}'")
    placeholder, in_env, in_files, in_procs = out.split()
    assert placeholder.startswith("a3s-secret-token-") and (in_env, in_files, in_procs) == ("0", "0", "0")
    # TLS to the secret's host is verified against the box's CA (in the guest's trust
    # bundle), two requests on one connection, the placeholder replaced in both
    url = f"https://api.test:{s}"
    code, out, err = _sh(box, f'curl -sS -m 10 -H "Authorization: Bearer $TOKEN" {url}/k1 {url}/k2')
    assert code == 0, err
    assert internet.last("/k1")["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert internet.last("/k2")["headers"]["authorization"] == f"Bearer {TOKEN}"
    assert "a3s-secret" not in json.dumps(internet.requests[-2:])
    # the upstream echoed the value in its replies: the guest read the placeholder there
    assert TOKEN not in out and out.count("Bearer a3s-secret-token-") == 2, out


def test_the_secret_value_is_in_no_host_file_or_host_environment(box: BoxCli, net: dict[str, object]) -> None:
    """Read as another local user or a taken-over VMM would: the home's files (state.db
    with its WAL, box.json, launch.json, logs) and /proc/PID/environ of every process of
    the box (shim, QEMU) and of the host's egress daemon. The value is in the memory of the
    daemon and in a memfd the box's shim holds (to register the box again if the daemon
    is replaced), never in a path."""
    needle = TOKEN.encode()
    found = []
    for dirpath, _, files in os.walk(box.home):
        for name in files:
            p = Path(dirpath) / name
            try:
                if p.is_file() and not p.is_symlink() and needle in p.read_bytes():
                    found.append(str(p))
            except OSError:
                pass
    assert not found, found
    pids = box.vm_processes()
    assert pids
    for pid in pids:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            continue
        assert needle not in environ and b"A3S_TEST_TOKEN" not in environ, pid


def test_the_egress_proxy_runs_without_root(box: BoxCli, net: dict[str, object]) -> None:
    """The egress daemon parses everything every box's guest sends: it is a uid of its own
    with no capability, no_new_privs and a seccomp filter (issue 22's "less root", kept by
    issue 26's one proxy for the host)."""
    daemons = [int(d.name) for d in Path("/proc").iterdir()
               if d.name.isdigit() and b"a3s_box.network.daemon\0" + str(box.home).encode() in _cmdline(d)]
    assert len(daemons) == 1, daemons
    status = dict(line.split(":", 1) for line in Path(f"/proc/{daemons[0]}/status").read_text().splitlines())
    assert status["Uid"].split()[0] != "0" and status["Gid"].split()[0] != "0", status["Uid"]
    assert int(status["CapEff"], 16) == 0 and int(status["CapPrm"], 16) == 0 and int(status["CapBnd"], 16) == 0
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
    # and no per-box helper exists any more
    assert not [pid for pid in box.vm_processes() if b"a3s_box.network.helper" in _cmdline(Path(f"/proc/{pid}"))]


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""


def test_a_placeholder_sent_elsewhere_is_refused(box: BoxCli, net: dict[str, object],
                                                 internet: Internet) -> None:  # noqa: F811
    before = len(internet.requests)
    code, out, _ = _sh(box, f'curl -sS -m 10 -H "X-Key: $TOKEN" http://api.test:{net["http"]}/leak')
    assert "placeholder of secret TOKEN sent over plain HTTP" in out
    assert len(internet.requests) == before


def test_tls_to_a_host_without_secrets_passes_through_untouched(box: BoxCli, net: dict[str, object],
                                                                internet: Internet) -> None:  # noqa: F811
    code, out, err = _sh(box, f"curl -sSk -m 10 -v https://other.test:{net['https']}/through 2>&1")
    assert code == 0, out + err
    assert "a3s-box test internet CA" in out  # the upstream's own certificate, end to end
    assert internet.last("/through")["scheme"] == "https"


def test_a_spoofed_dns_answer_or_sni_does_not_redirect_the_dial(box: BoxCli, net: dict[str, object],
                                                                internet: Internet) -> None:  # noqa: F811
    s = net["https"]
    code, out, _ = _sh(box, f"curl -sS -m 5 -o /dev/null -w '%{{remote_ip}}' http://api.test:{net['http']}/ip")
    api_ip = out.strip().split()[0]
    assert api_ip.startswith("198.18.")  # an address of ours, not the real one
    before = len(internet.requests)
    # the guest claims evil.test lives at api.test's address: the stream says evil.test
    code, out, _ = _sh(box, f"curl -sSk -m 10 --resolve evil.test:{s}:{api_ip} https://evil.test:{s}/spoof; "
                            f"echo; curl -sSk -m 10 --resolve evil.test:{s}:127.0.0.1 https://evil.test:{s}/spoof2; "
                            "echo rc=$?")
    assert "does not match 'api.test'" in out and "rc=0" not in out.split("\n")[-2:]
    assert not any(r["path"].startswith("/spoof") for r in internet.requests[before:])


def test_what_the_proxy_cannot_read_is_refused_from_a_root_shell(box: BoxCli, net: dict[str, object],
                                                                  internet: Internet) -> None:  # noqa: F811
    """Raw bytes from the guest (busybox nc) to an allowed name's address: each of these
    reached the upstream carrying `Host: evil.test` or SNI evil.test before the proxy
    failed closed (issue 22)."""
    import base64

    from tests.security.test_proxy_attacks import _client_hello, _split_records

    h, s = net["http"], net["https"]
    code, out, _ = _sh(box, f"curl -sS -m 5 -o /dev/null -w '%{{remote_ip}}' http://api.test:{h}/ip")
    ip = out.strip().split()[0]
    code, out, _ = _sh(box, f"curl -sSk -m 5 -o /dev/null -w '%{{remote_ip}}' https://other.test:{s}/ip")
    other_ip = out.strip().split()[0]  # other.test has no secret: its TLS is passed through
    heads = {
        "crlf": b"\r\nGET /crlf HTTP/1.1\r\nHost: evil.test\r\n\r\n",
        "propfind": b"PROPFIND /propfind HTTP/1.1\r\nHost: evil.test\r\n\r\n",
        "clte": b"POST /clte HTTP/1.1\r\nHost: api.test\r\nContent-Length: 5\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "userinfo": b"GET /userinfo HTTP/1.1\r\nHost: api.test:1@evil.test\r\n\r\n",
        "big": b"GET /big-head HTTP/1.1\r\nHost: evil.test\r\nX: " + b"a" * (17 << 10) + b"\r\n\r\n",
    }
    before = len(internet.requests)
    script = "; ".join(f"echo {base64.b64encode(data).decode()} | base64 -d | timeout 10 busybox nc {ip} {h}; echo"
                       for data in heads.values())
    script += (f"; (sleep 1; printf 'GET /late HTTP/1.1\\r\\nHost: evil.test\\r\\n\\r\\n') | timeout 10 busybox nc {ip} {h}"
               f"; echo {base64.b64encode(_split_records(_client_hello('evil.test'), 20)).decode()}"
               f" | base64 -d | timeout 10 busybox nc {other_ip} {s}; echo done")
    code, out, err = _sh(box, script)
    assert out.rstrip().endswith("done"), out + err
    assert out.count("403 Forbidden") >= len(heads), out
    reached = [r["path"] for r in internet.requests[before:]]
    assert not any(p.startswith(("/crlf", "/propfind", "/clte", "/userinfo", "/big-head", "/late")) for p in reached)
    log = box("logs", "--network", "net").out
    assert "TLS server name 'evil.test' does not match 'other.test'" in log, log[-2000:]


def test_a_published_port_is_reachable_on_loopback_only(box: BoxCli, net: dict[str, object]) -> None:
    pub = int(str(net["pub"]))
    r = subprocess.run(["curl", "-sS", "-m", "10", f"http://127.0.0.1:{pub}/motd"], capture_output=True, text=True)
    assert r.stdout == "Welcome to an a3s-box microVM.\n", r.stderr
    host_ip = _host_address()
    if host_ip:
        r = subprocess.run(["curl", "-sS", "-m", "5", f"http://{host_ip}:{pub}/motd"], capture_output=True, text=True)
        assert r.returncode != 0
    # as root the box's shim (its C loop) answers the daemon for the port's sockets: no
    # Python keeper runs for the box
    rundir = box.home / "boxes" / _box_id(box, "net")
    keepers = [d for d in Path("/proc").iterdir()
               if d.name.isdigit() and _cmdline(d).startswith(f"a3s_box.network.keeper {rundir}".encode())]
    assert keepers == []


def test_a_changed_policy_recreates_the_box(box: BoxCli, net: dict[str, object]) -> None:
    override = Path(str(net["file"])).parent / "override.yaml"
    h, s = net["http"], net["https"]
    override.write_text(f'boxes:\n  net:\n    network:\n      egress: ["api.test:{h}", "api.test:{s}", '
                        f'"other.test:{s}", "new.test"]\n')
    r = box("plan", "-f", str(net["file"]), "-f", str(override))
    assert "~ box net" in r.out and "network.egress" in r.out
    override.unlink()


def _box_id(box: BoxCli, name: str) -> str:
    box_id: str = next(b["id"] for b in box("ps", "-o", "json", check=True).json() if b["name"] == name)
    return box_id
