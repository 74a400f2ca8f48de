"""The environment a box's host processes start with: a short allow-list, never the
caller's whole environment.

Threat: `box` and `box serve` run with the user's environment, which holds the values
of the variables that `secrets:` names and whatever other credentials a shell exports.
The shim and what it starts (the VMM, virtiofsd, the network helper) get only what they
need to run: a VMM taken over by its guest can read its own /proc/self/environ, and the
one process that holds secret values (the network helper) reads them from a 0600 file
it deletes, not from its environment.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# PYTHONPATH: the shim and helper are Python (a checkout run without installing);
# SSL_CERT_*: the trust store the proxy verifies upstreams with.
# LD_LIBRARY_PATH, A3S_BOX_LIBKRUN: where libkrun's supervisor finds the library.
KEPT = ("PATH", "LANG", "LC_ALL", "TZ", "PYTHONPATH", "SSL_CERT_FILE", "SSL_CERT_DIR", "A3S_BOX_DEBUG",
        "LD_LIBRARY_PATH", "A3S_BOX_LIBKRUN")


def host_process_env(environ: Mapping[str, str] = os.environ) -> dict[str, str]:
    env = {k: environ[k] for k in KEPT if k in environ}
    env.setdefault("PATH", DEFAULT_PATH)
    return env
