"""The box's DNS: answers only names the policy allows, each with an address of ours.

Sans-IO: `DnsResponder.answer(query_bytes) -> reply_bytes | None`. The guest never
learns a real address: every allowed name gets a stable address from 198.18.0.0/15
(RFC 2544 benchmarking space, never routed), and a connection to that address is, for
the proxy, a connection to that name. So a made-up DNS answer in the guest, or a
rebinding upstream, cannot steer where the host dials: the host resolves the name
itself when the connection is made.
"""
from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

POOL = ipaddress.IPv4Network("198.18.0.0/15")
TTL = 5  # short: nothing in the guest should cache what it cannot use anyway
_A, _AAAA, _IN = 1, 28, 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5


class DnsFormatError(ValueError):
    pass


@dataclass
class AddressBook:
    """Name <-> address of ours, stable for the box's life, bounded in size."""

    capacity: int = 65000
    _by_name: dict[str, ipaddress.IPv4Address] = field(default_factory=dict)
    _by_ip: dict[ipaddress.IPv4Address, str] = field(default_factory=dict)

    def address_of(self, name: str) -> ipaddress.IPv4Address | None:
        ip = self._by_name.get(name)
        if ip is None:
            if len(self._by_name) >= self.capacity:
                return None
            ip = POOL.network_address + 2 + len(self._by_name)
            self._by_name[name], self._by_ip[ip] = ip, name
        return ip

    def name_of(self, ip: ipaddress.IPv4Address) -> str | None:
        return self._by_ip.get(ip)

    @staticmethod
    def is_ours(ip: ipaddress.IPv4Address) -> bool:
        return ip in POOL


@dataclass(frozen=True)
class Question:
    txid: int
    flags: int
    name: str
    qtype: int
    qclass: int
    raw_question: bytes  # echoed in the reply


def _read_name(data: bytes, pos: int) -> tuple[str, int]:
    labels: list[str] = []
    total = 0
    while True:
        if pos >= len(data):
            raise DnsFormatError("name runs past the message")
        n = data[pos]
        if n & 0xC0:
            raise DnsFormatError("compressed names are not expected in a question")
        pos += 1
        if n == 0:
            break
        label = data[pos:pos + n]
        if len(label) != n:
            raise DnsFormatError("label runs past the message")
        total += n + 1
        if total > 255:
            raise DnsFormatError("name longer than 255 bytes")
        labels.append(label.decode("ascii", "replace").lower())
        pos += n
    return ".".join(labels), pos


def parse_query(data: bytes) -> Question:
    if len(data) < 12:
        raise DnsFormatError("shorter than a DNS header")
    txid, flags, qd, _an, _ns, _ar = struct.unpack("!6H", data[:12])
    if flags & 0x8000:
        raise DnsFormatError("a response, not a query")
    if qd != 1:
        raise DnsFormatError("exactly one question expected")
    name, pos = _read_name(data, 12)
    if pos + 4 > len(data):
        raise DnsFormatError("question runs past the message")
    qtype, qclass = struct.unpack("!2H", data[pos:pos + 4])
    return Question(txid, flags, name, qtype, qclass, data[12:pos + 4])


def reply(q: Question, rcode: int, address: ipaddress.IPv4Address | None = None) -> bytes:
    flags = 0x8000 | (q.flags & 0x0100) | 0x0080 | (rcode & 0xF)  # QR, RD echoed, RA
    answers = 1 if address is not None else 0
    out = struct.pack("!6H", q.txid, flags, 1, answers, 0, 0) + q.raw_question
    if address is not None:
        out += struct.pack("!HHHIH", 0xC00C, _A, _IN, TTL, 4) + address.packed
    return out


@dataclass
class DnsResponder:
    allows: Callable[[str], bool]
    book: AddressBook = field(default_factory=AddressBook)

    def answer(self, data: bytes) -> tuple[bytes | None, str, str]:
        """(reply or None to stay silent, the name asked, what was answered) for the log."""
        try:
            q = parse_query(data)
        except DnsFormatError as e:
            if len(data) >= 12:
                txid = struct.unpack("!H", data[:2])[0]
                return struct.pack("!6H", txid, 0x8000 | FORMERR, 0, 0, 0, 0), "", f"formerr: {e}"
            return None, "", "dropped: too short"
        if q.qclass != _IN:
            return reply(q, NOTIMP), q.name, "notimp"
        if not self.allows(q.name):
            return reply(q, NXDOMAIN), q.name, "nxdomain (not allowed)"
        if q.qtype == _AAAA:
            return reply(q, NOERROR), q.name, "no AAAA (IPv4 only)"
        if q.qtype != _A:
            return reply(q, NOERROR), q.name, f"no records of type {q.qtype}"
        ip = self.book.address_of(q.name)
        if ip is None:
            return reply(q, SERVFAIL), q.name, "servfail (address book full)"
        return reply(q, NOERROR, ip), q.name, str(ip)
