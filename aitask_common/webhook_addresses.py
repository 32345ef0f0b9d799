"""Which addresses a webhook may reach, and resolving a webhook's host without blocking the event loop.

A webhook_url is checked at create and again at every delivery against the very address connected to, so a
host whose DNS answer changes after the create (DNS rebinding) cannot turn a delivery towards an internal service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Final

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance-metadata endpoints (AWS, GCP, Azure, OpenStack; AWS's IPv6 one; AWS ECS task metadata; Alibaba;
# Oracle): refused even when private addresses are allowed.
METADATA_ADDRESSES: Final = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200", "192.0.0.192")
)


class AddressRefused(ValueError):
    """A webhook host resolves to an address deliveries may not reach, or does not resolve at all."""


def refusal(address: IPAddress, allow_private: bool) -> str | None:
    """Why a webhook may not reach `address`, or None when it may."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "an unspecified address"
    if allow_private:
        return None
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_private or address.is_reserved or not address.is_global:
        return "a private address"
    return None


async def resolve(host: str, port: int, timeout: float) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal is its own answer), within `timeout` seconds.

    getaddrinfo runs in the event loop's thread pool: the loop keeps serving while it waits.
    """
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        answers = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout)
    except TimeoutError as error:
        raise AddressRefused(f"{host} did not resolve within {timeout:g} s") from error
    except OSError as error:
        raise AddressRefused(f"{host} does not resolve ({error.strerror or error})") from error
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in answers:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise AddressRefused(f"{host} does not resolve")
    return addresses


async def allowed_addresses(host: str, port: int, timeout: float, allow_private: bool) -> list[IPAddress]:
    """The addresses of `host`, if every one of them may be reached; AddressRefused naming the first that may not."""
    addresses = await resolve(host, port, timeout)
    for address in addresses:
        reason = refusal(address, allow_private)
        if reason is not None:
            raise AddressRefused(f"{host} resolves to {reason} ({address})")
    return addresses
