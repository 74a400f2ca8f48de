"""Where the guest finds the box's CA (written before the agent starts) and what tells
its TLS clients to trust it.

Apart from network.ca so that knowing the paths does not import `cryptography` (most
commands never make a certificate)."""
from __future__ import annotations

GUEST_CA_CERT = "/.a3s/box-ca.pem"  # the CA alone (NODE_EXTRA_CA_CERTS adds it to node's)
GUEST_CA_BUNDLE = "/.a3s/ca-bundle.pem"  # the image's trust store plus the CA
GUEST_TRUST_STORE = "/etc/ssl/certs/ca-certificates.crt"  # Debian/Alpine's bundle, extended too
# where images keep their trust store (Debian/Alpine, Fedora/RHEL, others), relative to /
TRUST_STORES = (GUEST_TRUST_STORE.lstrip("/"), "etc/pki/tls/certs/ca-bundle.crt", "etc/ssl/cert.pem")


def ca_environment() -> dict[str, str]:
    """The variables that make OpenSSL, Python's requests, curl and node trust the box's
    CA (its proxy terminates TLS to the secrets' hosts, and only those)."""
    bundle = {name: GUEST_CA_BUNDLE for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    return {**bundle, "NODE_EXTRA_CA_CERTS": GUEST_CA_CERT}
