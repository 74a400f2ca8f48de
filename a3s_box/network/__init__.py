"""Box networking: the policy, the box's DNS, the egress proxy, secrets and the per-box
network namespace. Used by the drivers' supervisors; the drivers only wire devices and
sockets to it.

    policy.py   the rules and the decision for one flow (pure)
    dns.py      the box's DNS: our addresses for allowed names (sans-IO)
    sniff.py    TLS SNI and HTTP Host from a flow's first bytes (sans-IO)
    secrets.py  placeholders and their substitution (pure)
    ca.py       the per-box CA for secret hosts
    netns.py    the box's network namespace and its netfilter rules
    egress.py   the asyncio proxy of one box (TCP, HTTP/1.1 with secrets, DNS, published ports)
    daemon.py   the host-wide egress daemon: one process serving every box's Egress
    registration.py  a supervisor's side of it: the box's namespace, registered with the daemon
    wire.py     what those two say to each other (sans-IO)
    helper.py   the per-box process that ran one Egress beside the VMM (boxes started before the daemon)
    privileges.py  dropping root for good (helper and daemon)
    log.py      the per-box network log
"""
