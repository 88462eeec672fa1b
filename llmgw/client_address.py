"""The client's address: the peer's, or, behind a trusted reverse proxy, the one the
proxy forwarded.

Behind nginx every request comes from nginx's address, so whatever is counted or
recorded per client (failed logins, the audit log's door, the access line's `client`)
would see one client. nginx names the real one in `X-Forwarded-For`
(`$proxy_add_x_forwarded_for` appends the address it saw to whatever the client sent).
The header is believed only as far as proxies in `[admin] trusted_proxies` wrote it:
its addresses are read from the right (the nearest hop first), trusted proxies are
skipped, and the first address that is not one is the client. What lies left of it
was written by the client and could say anything. An entry that is not an address
ends the walk at the last trusted hop. With no trusted proxies (the default), or a peer
that is not one, the header is ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (config.py imports this module: no aiohttp for `llmgw config`)
    from aiohttp import web

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_network(entry: str) -> IPNetwork:
    """`127.0.0.1`, `10.0.0.0/8`, `::1` or `fd00::/8`; ValueError naming the entry."""
    try:
        return ipaddress.ip_network(entry.strip())
    except ValueError as exc:
        raise ValueError(f"{entry!r} is not an IP address or network ({exc})") from None


class TrustedProxies:
    """The reverse proxies whose `X-Forwarded-For` is believed."""

    def __init__(self, entries: Iterable[str] = ()) -> None:
        self._networks = tuple(parse_network(entry) for entry in entries)

    def __bool__(self) -> bool:
        return bool(self._networks)

    def client_of(self, request: web.BaseRequest) -> str:
        """The address of the client that sent `request`."""
        if not self._networks:  # the default: nothing to look up
            return request.remote or "unknown"
        return self.client(request.remote, request.headers.getall("X-Forwarded-For", ()))

    def client(self, peer: str | None, forwarded_for: Sequence[str]) -> str:
        """The client's address, from the peer's and the `X-Forwarded-For` header's values
        (several headers read as one list, in order)."""
        if peer is None:
            return "unknown"
        peer_ip = _address(peer)
        if peer_ip is None or not self._trusts(peer_ip):
            return peer
        client = str(peer_ip)
        for header in reversed(forwarded_for):
            for hop in reversed(header.split(",")):
                ip = _address(hop.strip())
                if ip is None:
                    return client
                client = str(ip)
                if not self._trusts(ip):
                    return client
        return client  # every hop a trusted proxy: the farthest of them

    def _trusts(self, ip: IPAddress) -> bool:
        return any(ip in network for network in self._networks)


def _address(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A dual-stack socket reports an IPv4 peer as ::ffff:a.b.c.d.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip
