"""What a running tritonserver looks like to the OS (psutil): its Python stubs and its listening sockets."""
from __future__ import annotations

import ipaddress
from pathlib import Path

import psutil


def python_stubs(server_pid: int) -> dict[int, str]:
    """{pid: model name} of the server's Python-backend stubs (argv[1] is <repo>/<model>/<v>/model.py)."""
    stubs = {}
    for child in psutil.Process(server_pid).children():
        try:
            argv = child.cmdline()
        except psutil.Error:       # gone since it was listed
            continue
        if argv and argv[0].endswith("triton_python_backend_stub"):
            stubs[child.pid] = Path(argv[1]).parent.parent.name
    return stubs


def _address(ip: str, port: int) -> str:
    address = ipaddress.ip_address(ip)
    if address.version == 6 and address.ipv4_mapped:   # gRPC listens on an IPv6 socket for an IPv4 address
        return f"{address.ipv4_mapped}:{port}"
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def listening_addresses(pid: int) -> list[str]:
    """'host:port' of every TCP socket the process listens on (IPv4 and IPv6)."""
    return sorted(_address(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="tcp")
                  if c.status == psutil.CONN_LISTEN)
