"""The SSRF guard for every outbound call to a customer URL.

A URL passes when it is ``http``/``https`` without credentials and its host resolves only to
public addresses: loopback, private, link-local, shared (CGNAT), multicast, reserved and
unspecified ranges are refused in IPv4 and IPv6, including IPv4 addresses carried inside IPv6
(mapped, 6to4, Teredo, NAT64). The caller then connects to the address checked here, not to a
second lookup of the name, so a DNS answer that changes between check and connect (rebinding)
cannot steer the request inside. ``client.post`` applies it to every redirect hop.
``allowed_networks`` (the ``OUTBOUND_ALLOWED_NETWORKS`` setting: the tests' loopback receivers, a
developer's local receiver, an operator's own network) lets named non-public networks through;
it never lifts the scheme rule.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import SplitResult, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[tuple[Any, ...]]]

_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
ALLOWED_SCHEMES = ("http", "https")


class DestinationRefused(Exception):
    """The URL may not be called: bad scheme, no host, or an address inside the walls."""


@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str  # the name as written: Host header, TLS SNI and certificate check
    port: int
    target: str  # path and query, as sent on the request line
    addresses: tuple[str, ...]  # checked addresses to connect to, in resolver order


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]


def parse_networks(values: Iterable[str]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """CIDRs (``127.0.0.1/32``, ``::1/128``); ``ValueError`` on a bad one."""
    return [ipaddress.ip_network(value.strip(), strict=False) for value in values if value.strip()]


def address_allowed(ip: IPAddress, allowed_networks: Networks = ()) -> bool:
    """Public, or inside a network the operator allowed."""
    if any(ip.version == net.version and ip in net for net in allowed_networks):
        return True
    return address_is_public(ip)


def address_is_public(ip: IPAddress) -> bool:
    """Whether ``ip`` is a public unicast address, looking through IPv4-in-IPv6 forms."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = _embedded_ipv4(ip)
        if inner is not None and not address_is_public(inner):
            return False
    return ip.is_global and not (
        ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_reserved or ip.is_unspecified
    )


def _parse(url: str) -> tuple[SplitResult, str, int]:
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise DestinationRefused("The URL cannot be parsed.") from None
    if parts.scheme not in ALLOWED_SCHEMES:
        raise DestinationRefused("Only http and https URLs are called.")
    if parts.username is not None or parts.password is not None:
        raise DestinationRefused("URLs with credentials are not called.")
    if not parts.hostname:
        raise DestinationRefused("The URL has no host.")
    return parts, parts.hostname, port


def check_url_form(url: str, *, allowed_networks: Networks = ()) -> None:
    """What can be refused without a DNS lookup (when a customer registers a URL): the scheme,
    credentials, and a host that is a non-public address literal or ``localhost``. The full
    check runs on every call."""
    _, host, _ = _parse(url)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if (host == "localhost" or host.endswith(".localhost")) and not allowed_networks:
            raise DestinationRefused("The host is this machine.") from None
        return
    if not address_allowed(ip, allowed_networks):
        raise DestinationRefused("The host is a non-public address.")


# One answer for a name that does not resolve and one that resolves inside our walls: the
# difference would let a customer map our internal DNS through their delivery log.
UNREACHABLE_NAME = "The host does not resolve to a public address."


def check_url(url: str, *, allowed_networks: Networks = (), resolver: Resolver = socket.getaddrinfo) -> Destination:
    """Parse and resolve ``url``; ``DestinationRefused`` unless every address it resolves to may
    be called (one private answer among public ones refuses the name: the client could be sent to
    any of them)."""
    parts, host, port = _parse(url)
    try:
        answers = resolver(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise DestinationRefused(UNREACHABLE_NAME) from None
    addresses: list[str] = []
    for answer in answers:
        address = str(answer[4][0]).split("%", 1)[0]  # drop an IPv6 zone id
        ip = ipaddress.ip_address(address)
        if not address_allowed(ip, allowed_networks):
            raise DestinationRefused(UNREACHABLE_NAME)
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise DestinationRefused(UNREACHABLE_NAME)
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    return Destination(scheme=parts.scheme, host=host, port=port, target=target, addresses=tuple(addresses))
