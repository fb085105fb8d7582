"""What a running tritonserver looks like from /proc: its Python stubs and its listening sockets."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path


def python_stubs(server_pid: int) -> dict[int, str]:
    """{pid: model name} of the server's Python-backend stubs (argv[1] is <repo>/<model>/<v>/model.py)."""
    stubs = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == server_pid and argv[0].endswith(b"triton_python_backend_stub"):
            stubs[int(entry)] = Path(argv[1].decode()).parent.parent.name
    return stubs


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def _hex_address(text: str, v6: bool) -> str:
    addr, port = text.split(":")
    raw = bytes.fromhex(addr)
    if v6:   # four little-endian 32-bit words
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
        ip = ipaddress.IPv6Address(raw)
        if ip.ipv4_mapped:           # gRPC listens on an IPv6 socket for an IPv4 address
            return f"{ip.ipv4_mapped}:{int(port, 16)}"
        return f"[{ip}]:{int(port, 16)}"
    return f"{'.'.join(str(b) for b in raw[::-1])}:{int(port, 16)}"


def listening_addresses(pid: int) -> list[str]:
    """'host:port' of every TCP socket the process listens on (IPv4 and IPv6)."""
    inodes = _socket_inodes(pid)
    found = []
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:        # 0A = LISTEN
                found.append(_hex_address(cols[1], v6))
    return sorted(found)
