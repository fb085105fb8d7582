"""What a running tritonserver looks like to the OS (psutil): its Python stubs and its listening sockets."""
from __future__ import annotations

import ipaddress

import psutil

from server.drill import python_stubs  # noqa: F401 (the tests' name for it)


def _address(ip: str, port: int) -> str:
    address = ipaddress.ip_address(ip)
    if address.version == 6 and address.ipv4_mapped:   # gRPC listens on an IPv6 socket for an IPv4 address
        return f"{address.ipv4_mapped}:{port}"
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def listening_addresses(pid: int) -> list[str]:
    """'host:port' of every TCP socket the process listens on (IPv4 and IPv6)."""
    return sorted(_address(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="tcp")
                  if c.status == psutil.CONN_LISTEN)
