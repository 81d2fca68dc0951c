"""Where a webhook may be sent: public addresses only, unless the operator's allow-list names the target.

A subscription is a request to make the hub send HTTP somewhere; without this check any key could
point it at the hub's own services, the cloud metadata endpoint or the private network, and read
its delivery counts as a port scanner. So a target host must resolve only to public unicast
addresses that are not this machine's, checked when subscribing and again at every delivery on
the address actually connected to (a name that later resolves inward is refused then).

`CGTHUB_WEBHOOK_ALLOW` (comma-separated) names the internal targets an operator vouches for:
`host:port` admits exactly that target; `host`, an address or a network (`10.1.0.0/16`) admits
every port but the hub's own (the MLLP listener's, the API's and Airflow's), which only an entry
with that port opens.

A target also decides how long a delivery takes: httpx's timeouts bound each read, so a receiver
that dribbles its answer a byte at a time could hold the delivery loop for ever. `delivery_client`
makes the client every delivery goes through, whose connections give up once the delivery's
`deadline` (CGTHUB_WEBHOOK_DELIVERY_DEADLINE) has passed, whatever the receiver is doing.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
import psutil

from cgthub.errors import CgthubError
from cgthub.settings import get_settings

ALLOW_ENV = "CGTHUB_WEBHOOK_ALLOW"
DEFAULT_HUB_PORTS = frozenset({2575, 8080, 8088})  # MLLP listener, Airflow, `cgthub api serve`

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_SHARED = ipaddress.ip_network("100.64.0.0/10")


class TargetRefused(CgthubError, ValueError):
    """The URL may not be a webhook target; the message names no resolved address."""


class HostUnresolved(TargetRefused):
    """The URL's host does not resolve now: nothing to deliver to, and nothing to judge yet."""


@dataclass(frozen=True)
class Target:
    """A checked destination: the URL's host and port, and the address to connect to."""

    host: str
    port: int
    address: str


@dataclass(frozen=True)
class _Entry:
    host: str | None
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    port: int | None

    def names(self, host: str, address: IpAddress, port: int) -> bool:
        if self.port is not None and self.port != port:
            return False
        if self.host is not None:
            return self.host == host
        return self.network is not None and address in self.network


def hub_ports() -> frozenset[int]:
    """Ports of the hub's own services: the MLLP listener's (also CGTHUB_MLLP_LISTENER's), Airflow's and the API's."""
    ports = set(DEFAULT_HUB_PORTS)
    listener = get_settings().mllp_listener
    if listener.rpartition(":")[2].isdigit():
        ports.add(int(listener.rpartition(":")[2]))
    return frozenset(ports)


def _entries(value: str) -> list[_Entry]:
    entries = []
    for raw in value.split(","):
        text = raw.strip().lower()
        if not text:
            continue
        port: int | None = None
        host = text
        if text.startswith("["):  # [v6] or [v6]:port
            inside, _, rest = text[1:].partition("]")
            host = inside
            port = int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
            port = int(port_text) if port_text.isdigit() else None
        try:
            entries.append(_Entry(None, ipaddress.ip_network(host, strict=False), port))
        except ValueError:
            entries.append(_Entry(host.rstrip("."), None, port))
    return entries


def allow_list() -> list[_Entry]:
    return _entries(get_settings().webhook_allow)


def _unwrapped(address: IpAddress) -> IpAddress:
    """The IPv4 address an IPv6 form carries (mapped, NAT64, 6to4), so ::ffff:127.0.0.1 is loopback."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address in _NAT64:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if address.sixtofour is not None:
            return address.sixtofour
    return address


_own: tuple[float, frozenset[IpAddress]] = (0.0, frozenset())


def own_addresses() -> frozenset[IpAddress]:
    """Every address of this machine's interfaces (a public one reaches the hub's own services too)."""
    global _own
    at, addresses = _own
    if time.monotonic() - at > 60:
        found: set[IpAddress] = set()
        for interface in psutil.net_if_addrs().values():
            for item in interface:
                if item.family in (socket.AF_INET, socket.AF_INET6):
                    try:
                        found.add(ipaddress.ip_address(item.address.split("%", 1)[0]))
                    except ValueError:
                        continue
        addresses = frozenset(found)
        _own = (time.monotonic(), addresses)
    return addresses


def is_internal(address: IpAddress) -> bool:
    """Loopback, link-local, private, unique-local, unspecified, multicast, reserved, shared, or this machine."""
    plain = _unwrapped(address)
    return (
        not plain.is_global
        or plain.is_multicast
        or plain.is_unspecified
        or plain in _SHARED
        or address in own_addresses()
        or plain in own_addresses()
    )


def resolve(host: str, port: int) -> list[str]:
    """The addresses `host` resolves to (what a connection to it would use)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check(url: str, *, serving_port: int | None = None) -> Target:
    """The address to send `url`'s webhooks to, or TargetRefused; `serving_port` is the port this
    API answers on, one of the hub's own."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise TargetRefused("a webhook URL is http(s) with a host")
    host = parts.hostname.lower().rstrip(".")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise TargetRefused("the URL's port is not valid") from exc
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError) as exc:
        raise HostUnresolved("the URL's host does not resolve") from exc
    if not addresses:
        raise HostUnresolved("the URL's host does not resolve")
    entries = allow_list()
    own_ports = hub_ports() | ({serving_port} if serving_port else set())
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])
        named = [e for e in entries if e.names(host, address, port)]
        if any(e.port is not None for e in named):
            continue  # the operator named this very target
        if not is_internal(address) or (named and port not in own_ports):
            continue
        raise TargetRefused(
            "webhooks may not reach loopback, link-local, private, multicast or the hub's own "
            f"addresses and ports; an operator can allow a target in {ALLOW_ENV}"
        )
    return Target(host=host, port=port, address=addresses[0])


class _Deadline(threading.local):
    """When the current thread's delivery must be over (monotonic seconds), or None outside one."""

    at: float | None = None


_deadline = _Deadline()


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Every read, write and connect of this thread's delivery client ends by `seconds` from now."""
    _deadline.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _deadline.at = None


def _bounded(timeout: float | None, late: type[Exception]) -> float | None:
    at = _deadline.at
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise late("the receiver took longer than the delivery deadline")
    return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None) -> Any:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, bounded))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        bounded = _bounded(timeout, httpcore.ConnectTimeout)
        return _DeadlineStream(self._inner.connect_tcp(host, port, bounded, local_address, socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


class _DeadlineTransport(httpx.HTTPTransport):
    """httpx's own transport over a connection pool whose streams keep the thread's deadline."""

    def __init__(self) -> None:
        super().__init__()
        limits = httpx.Limits()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_DeadlineBackend(),
        )


def delivery_client(timeout: httpx.Timeout) -> httpx.Client:
    """The client webhooks are posted with: redirects not followed (a 3xx is the receiver's answer,
    never a second target), each read within `timeout`, the whole exchange within `deadline`."""
    return httpx.Client(timeout=timeout, follow_redirects=False, transport=_DeadlineTransport())
