"""Where the guest finds the box's CA (written by the driver before the agent starts).

Apart from network.ca so that knowing the paths does not import `cryptography` (most
commands never make a certificate)."""
from __future__ import annotations

GUEST_CA_CERT = "/.a3s/box-ca.pem"  # the CA alone (NODE_EXTRA_CA_CERTS adds it to node's)
GUEST_CA_BUNDLE = "/.a3s/ca-bundle.pem"  # the image's trust store plus the CA
GUEST_TRUST_STORE = "/etc/ssl/certs/ca-certificates.crt"  # Debian/Alpine's bundle, extended too
