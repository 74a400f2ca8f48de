"""The egress proxy of one box: every TCP flow and DNS query the box sends ends here.

Threat (see policy.py): the guest is hostile. The proxy decides each flow on what the
host knows, the name behind one of our DNS addresses or the raw IP, and what the
stream itself claims (TLS SNI, HTTP Host) must agree with that name. It then dials
the name itself, resolving it now (a rebinding DNS cannot point it at the host's
network) or the `hosts:` address, never the IP the guest chose. Flows to a secret's
hosts on port 443 are terminated with the box's CA so that placeholders can be
replaced (secrets.py); every other TLS flow passes through untouched.

Runs in the per-box helper (network/helper.py) or, one Egress per box, in the host-wide
egress daemon (network/daemon.py): listeners live in the box's network namespace
(netns.py), outgoing sockets in the host's. An Egress holds one box's policy, secrets
and CA and serves only the listener it is given; close() ends its flows (the daemon
goes on serving other boxes), and nothing it does after that touches the box's files.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import struct
import threading
from contextlib import closing, contextmanager
from pathlib import Path
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from a3s_box.network.ca import CaPem, LeafIssuer
from a3s_box.network.dns import AddressBook, DnsResponder
from a3s_box.network.exchange import CHUNK, LINGER, LINGER_BYTES, Counter, Exchange, forbidden
from a3s_box.network.log import NetworkLog
from a3s_box.network.policy import Flow, NetworkPolicy, Verdict
from a3s_box.network.http1 import could_be_http
from a3s_box.network.secrets import SecretBook
from a3s_box.network.sniff import MAX_PEEK, Sniffed, sniff
from a3s_box.network.tls import Stream, TlsStream

SO_ORIGINAL_DST = 80
SNIFF_WAIT = 0.3  # server-first protocols (ssh, smtp) send nothing: do not wait for them longer
DIAL_TIMEOUT = 15.0
IDLE_TIMEOUT = 300.0  # a flow on which nothing moves either way this long is closed
MAX_FLOWS = 256  # flows one box may have open at once
# Ports where a flow to a name must be read (TLS ClientHello or HTTP head) and checked
# before anything is relayed: here a server-first protocol is not expected, and an
# unreadable start could carry another name to a shared front end.
WEB_PORTS = frozenset({80, 443, 8000, 8080, 8443, 8888})


class Denied(Exception):
    pass


def original_destination(sock: Any) -> tuple[ipaddress.IPv4Address, int]:
    """Where the box meant to connect, before the namespace's REDIRECT rule."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, addr = struct.unpack("!2xH4s8x", raw)
    return ipaddress.IPv4Address(addr), port


@dataclass
class Activity:
    """When bytes last moved on a relayed flow (either way), and its streams to close
    when idle. (HTTP flows, in threads, idle out by their sockets' timeouts.)"""
    last: float
    streams: tuple[asyncio.StreamWriter, ...] = ()
    idled: bool = False

    def touch(self) -> None:
        self.last = asyncio.get_running_loop().time()


def host_addresses() -> frozenset[ipaddress.IPv4Address]:
    """Every IPv4 address local to the host's network namespace (the kernel's LOCAL
    routes, /proc/net/fib_trie), public ones included: `public` must not reach a host
    service bound to 0.0.0.0 through the host's own public address."""
    out: set[ipaddress.IPv4Address] = set()
    try:
        lines = Path("/proc/net/fib_trie").read_text(encoding="ascii").splitlines()
    except OSError:
        return frozenset()
    for prev, line in zip(lines, lines[1:]):
        if line.strip() == "/32 host LOCAL" and "|--" in prev:
            try:
                out.add(ipaddress.IPv4Address(prev.split("|--")[1].strip()))
            except ValueError:
                pass
    return frozenset(out)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                count: Callable[[int], None], activity: Activity | None = None) -> None:
    try:
        while data := await reader.read(CHUNK):
            if activity is not None:
                activity.touch()
            writer.write(data)
            count(len(data))
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError, ssl.SSLError):
        pass


async def _answer_raw(sock: socket.socket, data: bytes) -> None:
    """A last word to the box (it may have gone already), then a lingering close: what
    the box sent that the proxy did not read is drained for a while, for closing on
    unread bytes resets the flow and the box would lose the answer."""
    loop = asyncio.get_running_loop()
    try:
        await asyncio.wait_for(loop.sock_sendall(sock, data), DIAL_TIMEOUT)
        sock.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(LINGER):
            drained = 0
            while drained < LINGER_BYTES and (chunk := await loop.sock_recv(sock, CHUNK)):
                drained += len(chunk)
    except (ConnectionError, OSError, asyncio.TimeoutError):
        pass


async def _close(*writers: asyncio.StreamWriter) -> None:
    for w in writers:
        try:
            w.close()
        except (ConnectionError, OSError, RuntimeError):
            pass


class Egress:
    def __init__(self, policy: NetworkPolicy, secrets: SecretBook, log: NetworkLog,
                 ca_folder: Any = None, upstream_tls: ssl.SSLContext | None = None,
                 destination: Callable[[Any], tuple[ipaddress.IPv4Address, int]] = original_destination,
                 local_addresses: Callable[[], frozenset[ipaddress.IPv4Address]] = host_addresses,
                 leaves: Any = None, ca: CaPem | None = None) -> None:
        self.policy = policy
        self.destination = destination  # SO_ORIGINAL_DST; injectable for tests without netfilter
        self.local_addresses = local_addresses  # the host's own: never dialled in `public`
        self.secrets = secrets
        self.log = log
        self.dns = DnsResponder(policy.answers)
        # The box's CA: read from CA_FOLDER, or given as CA (the daemon cannot read the folder)
        self._ca = (ca_folder, leaves, ca)
        self.leaves = LeafIssuer(ca_folder, leaves, ca) if secrets and (ca_folder is not None or ca is not None) \
            else None
        # The host's trust store (OpenSSL's default paths; SSL_CERT_FILE is honoured).
        self.upstream_tls = upstream_tls or ssl.create_default_context()
        self.open_flows = 0
        self.max_flows = MAX_FLOWS
        self.idle_timeout = IDLE_TIMEOUT
        self.closed = False
        self._flows: set[asyncio.Task[None]] = set()
        # Sockets an HTTP flow's thread owns (the box's, the upstream's): close() shuts
        # them down so that the thread ends; the thread alone closes them.
        self._threads_socks: set[socket.socket] = set()

    # --- TCP from the box -----------------------------------------------------------
    async def serve(self, listener: socket.socket) -> None:
        """Accepts the box's flows on LISTENER until cancelled."""
        loop = asyncio.get_running_loop()
        listener.setblocking(False)
        while not self.closed:
            sock, _ = await loop.sock_accept(listener)
            task = asyncio.create_task(self.on_connection(sock))
            self._flows.add(task)
            task.add_done_callback(self._flows.discard)


    def set_secrets(self, secrets: SecretBook) -> None:
        """The box's secrets from now on (flows already open keep the book they read);
        ValueError if there are secrets but no CA to intercept their hosts with."""
        ca_folder, leaves, ca = self._ca
        if secrets and self.leaves is None:
            if ca_folder is None and ca is None:
                raise ValueError("secrets without the box's CA")
            self.leaves = LeafIssuer(ca_folder, leaves, ca)
        self.secrets = secrets
    def close(self) -> list[asyncio.Task[None]]:
        """Ends the box's flows (call on the loop, with serve() cancelled): relayed flows
        are cancelled, HTTP flows' sockets are shut down and their threads end by
        themselves. Returns the flows' tasks, to wait for (they log how each ended).
        Idempotent."""
        self.closed = True
        tasks = list(self._flows)
        for task in tasks:
            task.cancel()
        for sock in list(self._threads_socks):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # closed by its thread meanwhile, or never connected
                pass
        return tasks

    async def on_connection(self, sock: socket.socket) -> None:
        if self.closed:
            sock.close()
            return
        if self.open_flows >= self.max_flows:
            self.log.write(proto="tcp", verdict="deny", reason=f"the box has {self.open_flows} flows open "
                           f"(at most {self.max_flows})")
            sock.close()
            return
        self.open_flows += 1
        activity = Activity(asyncio.get_running_loop().time())
        try:
            await self._flow(sock, activity)
        except Exception as e:  # one flow's failure never stops the proxy
            self.log.write(proto="tcp", verdict="error", reason=f"{type(e).__name__}: {e}")
        finally:
            self.open_flows -= 1
            await _close(*activity.streams)
            sock.close()  # detached already when a thread or a stream took it over

    async def _watch(self, activity: "Activity") -> None:
        """Ends a relayed flow on which nothing moved, either way, for idle_timeout seconds."""
        loop = asyncio.get_running_loop()
        while True:
            left = activity.last + self.idle_timeout - loop.time()
            if left <= 0:
                activity.idled = True
                await _close(*activity.streams)
                return
            await asyncio.sleep(min(left, 5.0))

    async def _flow(self, sock: socket.socket, activity: "Activity") -> None:
        ip, port = self.destination(sock)
        name = self.dns.book.name_of(ip) if AddressBook.is_ours(ip) else None
        if AddressBook.is_ours(ip) and name is None:
            self.log.write(proto="tcp", dst=f"{ip}:{port}", verdict="deny",
                           reason="an address the box's DNS never handed out")
            return
        where = f"{name}:{port}" if name else f"{ip}:{port}"
        loop = asyncio.get_running_loop()
        if name and self.leaves and self.secrets.intercepts(name, port):
            verdict = self.policy.decide(Flow(port, name=name))
            if not verdict.allowed:
                self.log.write(proto="tcp", dst=where, verdict="deny", reason=verdict.reason)
                return
            await self._intercept(sock, name, port, verdict)
            return
        # Server-first protocols (ssh, smtp) send nothing until the server speaks: after a
        # short quiet time such a flow may start, but only to a name on a port that is not
        # a web port, and its first bytes are still read and decided before they go out.
        quiet_ok = name is None or port not in WEB_PORTS
        first, seen = await self._peek(lambda n: loop.sock_recv(sock, n), activity,
                                       SNIFF_WAIT if quiet_ok else None)
        if seen is None and first:
            seen = Sniffed("bad", reason=f"idle for {self.idle_timeout:g}s before its first bytes could be read"
                           if activity.idled else "the flow ended before its first bytes could be read")
        if seen is None and not quiet_ok:
            self.log.write(proto="tcp", dst=where, verdict="deny", reason="closed before sending anything")
            return
        verdict = self._decide(name, ip, port, seen)
        is_http = seen is not None and seen.kind in ("http", "bad") and could_be_http(first.lstrip(b"\r\n \t"))
        if not verdict.allowed:
            self.log.write(proto="tcp", dst=where, verdict="deny", reason=verdict.reason)
            if is_http and not activity.idled:
                await _answer_raw(sock, forbidden(verdict.reason))
            return
        if seen is not None and seen.kind == "http":
            try:
                candidates = await self._candidates(verdict)
            except Denied as e:
                self.log.write(proto="tcp", dst=where, verdict="deny", reason=str(e))
                await _answer_raw(sock, forbidden(str(e)))
                return
            host = verdict.dial[0] if verdict.dial else ""
            owned = self._hand_over(sock)
            await self._in_thread(lambda: self._exchange(owned, None, host, where, verdict, candidates, None, first))
            return
        try:
            up_r, up_w, peer = await self._dial(verdict)
        except Denied as e:
            self.log.write(proto="tcp", dst=where, verdict="deny", reason=str(e))
            return
        reader, writer = await asyncio.open_connection(sock=sock, limit=1 << 20)
        activity.streams = (writer, up_w)
        watchdog = asyncio.create_task(self._watch(activity))
        count = Counter()
        reason = verdict.reason
        try:
            if seen is None:  # quiet: let the server speak, decide on the box's first bytes
                server = asyncio.create_task(_pipe(up_r, writer, count.receive, activity))
                first, seen = await self._peek(reader.read, activity, None)
                late = self._decide(name, ip, port, seen) if seen is not None else verdict
                if not late.allowed or (seen is not None and seen.kind == "http"):
                    reason = late.reason if not late.allowed else "HTTP after a quiet start"
                    server.cancel()
                    self.log.write(proto="tcp", dst=where, verdict="deny", reason=reason)
                    return
                up_w.write(first)
                count.send(len(first))
                await asyncio.gather(_pipe(reader, up_w, count.send, activity), server)
                return
            up_w.write(first)
            count.send(len(first))
            await asyncio.gather(_pipe(reader, up_w, count.send, activity),
                                 _pipe(up_r, writer, count.receive, activity))
        finally:
            watchdog.cancel()
            await _close(up_w)
            self.log.write(proto="tcp", dst=where, ip=peer, verdict="allow",
                           reason=reason + (" (ended idle)" if activity.idled else ""),
                           sent=count.sent, received=count.received)

    def _decide(self, name: str | None, ip: ipaddress.IPv4Address, port: int, seen: Sniffed | None) -> Verdict:
        """The policy's verdict on what was read; fail-closed on what could not be."""
        if seen is not None and seen.kind == "bad":
            return Verdict(False, seen.reason)
        flow = Flow(port, name=name, ip=None if name else ip,
                    sni=seen.server_name if seen and seen.kind == "tls" else None,
                    http_host=seen.server_name if seen and seen.kind == "http" else None)
        verdict = self.policy.decide(flow)
        if not verdict.allowed:
            return verdict
        if seen is not None and seen.kind == "other" and name is not None and port in WEB_PORTS:
            return Verdict(False, f"neither TLS nor HTTP on {name}:{port} (a web port: only what "
                                  "can be read and checked is relayed)")
        if seen is not None and seen.kind == "http" and seen.head is not None:
            refusal, _, _ = self.secrets.substitute_fields(
                seen.head.target.encode(), seen.head.fields, None)
            if refusal:
                return Verdict(False, refusal)
        if name is None and self.policy.mode == "public" and ip in self.local_addresses():
            return Verdict(False, f"{ip} is an address of this host")
        return verdict

    async def _peek(self, read: Callable[[int], Awaitable[bytes]], activity: "Activity",
                    quiet: float | None) -> tuple[bytes, Sniffed | None]:
        """The flow's first bytes until they can be decided. QUIET: give up waiting for a
        first byte after that long (None: wait as long as the flow may idle)."""
        data, seen = b"", None
        while seen is None and len(data) < MAX_PEEK:
            wait = quiet if quiet is not None and not data else self.idle_timeout
            try:
                chunk = await asyncio.wait_for(read(MAX_PEEK - len(data)), wait)
            except asyncio.TimeoutError:
                activity.idled = wait == self.idle_timeout and (quiet is None or bool(data))
                break
            except (ConnectionError, OSError):
                break
            if not chunk:
                break
            activity.touch()
            data += chunk
            seen = sniff(data)
        return data, seen

    async def _candidates(self, verdict: Verdict) -> list[str]:
        """The addresses the proxy may dial for VERDICT, resolved now and checked."""
        assert verdict.dial is not None
        host, port = verdict.dial
        if verdict.pinned is not None:
            if verdict.reason == "public":
                await self._refuse_denied_addresses(verdict.pinned, port)
            return [str(verdict.pinned)]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, family=socket.AF_INET, type=socket.SOCK_STREAM)
        except OSError as e:
            raise Denied(f"cannot resolve {host}: {e}") from e
        candidates, why = [], f"{host} has no IPv4 address"
        local = self.local_addresses()
        for info in infos:
            ip = str(info[4][0])
            addr = ipaddress.IPv4Address(ip)
            refusal = self.policy.acceptable_answer(host, addr, port)
            if refusal is None and addr in local:
                refusal = f"{host} resolved to {ip}, an address of this host"
            if refusal:
                why = refusal
            elif ip not in candidates:
                candidates.append(ip)
        if not candidates:
            raise Denied(why)
        return candidates

    async def _dial(self, verdict: Verdict) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        """A stream to the first of VERDICT's candidates that answers (relayed flows)."""
        assert verdict.dial is not None
        host, port = verdict.dial
        last = ""
        for ip in await self._candidates(verdict):
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(ip, port), DIAL_TIMEOUT)
                return r, w, ip
            except (OSError, asyncio.TimeoutError) as e:
                last = f"{host} ({ip}:{port}): {e or 'timed out'}"
        raise Denied(f"cannot connect to {last}")

    def _connect(self, verdict: Verdict, candidates: list[str], tls_name: str | None
                 ) -> tuple[Stream, str]:
        """A blocking socket (TLS to TLS_NAME when given) to the first candidate that
        answers, with the idle timeout (HTTP flows, in their thread)."""
        assert verdict.dial is not None
        host, port = verdict.dial
        last = ""
        for ip in candidates:
            try:
                sock = socket.create_connection((ip, port), DIAL_TIMEOUT)
            except OSError as e:
                last = f"{host} ({ip}:{port}): {e or 'timed out'}"
                continue
            sock.settimeout(self.idle_timeout)
            if tls_name is None:
                return sock, ip
            try:
                return TlsStream.connect(sock, self.upstream_tls, tls_name), ip
            except ssl.SSLError as e:
                sock.close()
                raise Denied(f"{host}: upstream TLS failed ({e.reason or e})") from e
            except OSError as e:
                sock.close()
                last = f"{host} ({ip}:{port}): {e or 'timed out'}"
        raise Denied(f"cannot connect to {last}")

    async def _refuse_denied_addresses(self, ip: ipaddress.IPv4Address, port: int) -> None:
        """`public`: a raw address is refused when a name in `deny` resolves to it now
        (dialling a denied name's address must not get around the name)."""
        loop = asyncio.get_running_loop()
        for rule in self.policy.deny:
            if not rule.name or rule.wildcard or not rule.matches_port(port):
                continue
            try:
                infos = await loop.getaddrinfo(rule.name, port, family=socket.AF_INET,
                                               type=socket.SOCK_STREAM)
            except OSError:
                continue
            if any(ipaddress.IPv4Address(str(i[4][0])) == ip for i in infos):
                raise Denied(f"{ip} is an address of {rule.name}, which is denied")

    # --- HTTP: secrets replaced (TLS terminated with the box's CA) or plain -------------
    async def _intercept(self, sock: socket.socket, name: str, port: int, verdict: Verdict) -> None:
        assert self.leaves is not None
        context = self.leaves.context_for(name)  # here: the issuer's cache is the loop's alone
        try:
            candidates, refusal = await self._candidates(verdict), None
        except Denied as e:
            candidates, refusal = [], str(e)
        owned = self._hand_over(sock)
        await self._in_thread(lambda: self._exchange(owned, context, name, f"{name}:{port}", verdict,
                                                     candidates, refusal, b""))

    def _hand_over(self, sock: socket.socket) -> socket.socket:
        """SOCK's descriptor, for a flow's thread to own: the task's SOCK is detached (its
        close is a no-op), so a cancelled task cannot close a descriptor that the thread
        still uses and that the process may have given to another box's socket since."""
        owned = socket.socket(fileno=sock.detach())
        self._threads_socks.add(owned)
        return owned

    @contextmanager
    def _owned_by_thread(self, stream: Stream) -> Iterator[None]:
        """STREAM's socket is shut down by close() while the flow's thread uses it."""
        raw = stream.sock if isinstance(stream, TlsStream) else stream
        if not isinstance(raw, socket.socket):
            yield
            return
        self._threads_socks.add(raw)
        try:
            yield
        finally:
            self._threads_socks.discard(raw)

    def _exchange(self, sock: socket.socket, context: ssl.SSLContext | None, host: str, where: str,
                  verdict: Verdict, candidates: list[str], refusal: str | None, first: bytes) -> None:
        """An HTTP flow in its thread (exchange.py): TLS with the box when CONTEXT is
        given (intercepted), the upstream dialled, requests relayed until either ends.
        Owns SOCK (closes it)."""
        try:
            self._exchange_owned(sock, context, host, where, verdict, candidates, refusal, first)
        finally:
            self._threads_socks.discard(sock)
            sock.close()

    def _exchange_owned(self, sock: socket.socket, context: ssl.SSLContext | None, host: str, where: str,
                        verdict: Verdict, candidates: list[str], refusal: str | None, first: bytes) -> None:
        sock.setblocking(True)
        sock.settimeout(self.idle_timeout)
        box: Stream = sock
        if context is not None:
            try:
                box = TlsStream.accept(sock, context)
            except (ssl.SSLError, OSError) as e:
                self.log.write(proto="tcp", dst=where, verdict="deny", reason=f"TLS with the box failed: {e}")
                return
        with closing(box):
            try:
                if refusal is not None:
                    raise Denied(refusal)
                upstream, peer = self._connect(verdict, candidates, host if context is not None else None)
            except Denied as e:
                self.log.write(proto="tcp", dst=where, verdict="deny", reason=str(e))
                try:
                    box.sendall(forbidden(str(e)))
                except OSError:
                    pass
                return
            count, idled = Counter(), False
            with closing(upstream), self._owned_by_thread(upstream):
                if self.closed:  # the box's network ended while this flow dialled
                    return
                try:
                    Exchange(box, upstream, host, self.secrets, self.log, count, tls=context is not None).run(first)
                except TimeoutError:
                    idled = True
                except OSError:  # a peer went away, or its TLS failed
                    pass
            reason = verdict.reason + (" (intercepted for secrets)" if context is not None else "")
            self.log.write(proto="tcp", dst=where, ip=peer, verdict="allow",
                           reason=reason + (" (ended idle)" if idled else ""),
                           sent=count.sent, received=count.received)

    async def _in_thread(self, work: Callable[[], None]) -> None:
        """Runs WORK in a thread of its own and waits for it: one per HTTP flow, so many
        as the flow cap allows (a pool's fixed size would queue flows behind slow ones).
        Daemonic: the helper's exit does not wait for a flow."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if done.done():
                return
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

        def run() -> None:
            error: BaseException | None = None
            try:
                work()
            except BaseException as e:  # handed to the loop: on_connection logs it
                error = e
            try:
                loop.call_soon_threadsafe(settle, error)
            except RuntimeError:  # the loop is gone: the helper is exiting
                pass
        threading.Thread(target=run, name="a3s-flow", daemon=True).start()
        await done

    # --- DNS from the box -------------------------------------------------------------
    def on_dns(self, data: bytes) -> bytes | None:
        out, name, answer = self.dns.answer(data)
        self.log.write(proto="dns", dst=name, verdict="deny" if "nxdomain" in answer else "allow",
                       reason=answer)
        return out


class DnsProtocol(asyncio.DatagramProtocol):
    def __init__(self, egress: Egress) -> None:
        self.egress = egress
        self.transport: Any = None  # the selector datagram transport (not a DatagramTransport subclass)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        out = self.egress.on_dns(data)
        if out is not None and self.transport is not None:
            self.transport.sendto(out, addr)


async def relay_published(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          inner: socket.socket, inner_port: int) -> None:
    """A host connection to a published port, into the box's namespace where the VMM
    forwards it to the guest."""
    try:
        await asyncio.get_running_loop().sock_connect(inner, ("127.0.0.1", inner_port))
    except OSError:
        inner.close()
        await _close(writer)
        return
    await relay_connected(reader, writer, inner)


async def relay_connected(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                          inner: socket.socket) -> None:
    """A host connection to a published port, relayed to INNER: a socket of the box's
    namespace already connected to where the VMM forwards it to the guest."""
    try:
        inner.setblocking(False)
        in_r, in_w = await asyncio.open_connection(sock=inner)
    except OSError:
        inner.close()
        await _close(writer)
        return
    try:
        await asyncio.gather(_pipe(reader, in_w, lambda n: None), _pipe(in_r, writer, lambda n: None))
    finally:
        await _close(in_w, writer)
