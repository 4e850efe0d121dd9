"""The listening TCP sockets of this machine, read from /proc (no psutil), each with the process
that holds it: what the loopback test checks a running sweep against."""
from __future__ import annotations

import ipaddress
import os
import socket
import struct


def _address(hex_ip: str) -> str:
    raw = bytes.fromhex(hex_ip)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(hex_ip, 16)))
    words = struct.unpack("<4I", raw)  # /proc writes IPv6 as four host-order 32-bit words
    return socket.inet_ntop(socket.AF_INET6, struct.pack(">4I", *words))


def _socket_owners() -> dict[int, int]:
    owners = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    owners[int(target[8:-1])] = int(pid)
        except OSError:
            continue
    return owners


def command_of(pid: int | None) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except (OSError, TypeError):
        return "?"


def listeners() -> list[dict]:
    """Every listening TCP socket: {ip, port, pid, command, loopback}."""
    owners, out = _socket_owners(), []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            hex_ip, hex_port = fields[1].split(":")
            ip = _address(hex_ip)
            pid = owners.get(int(fields[9]))
            addr = ipaddress.ip_address(ip)
            loop = addr.is_loopback or (addr.version == 6 and addr.ipv4_mapped is not None and addr.ipv4_mapped.is_loopback)
            out.append({"ip": ip, "port": int(hex_port, 16), "pid": pid, "command": command_of(pid), "loopback": loop})
    return out


def descendants(root: int) -> set[int]:
    """root and every process below it."""
    children: dict[int, list[int]] = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
            children.setdefault(int(stat[stat.rindex(")") + 2:].split()[1]), []).append(int(pid))
        except OSError:
            continue
    out, todo = set(), [root]
    while todo:
        pid = todo.pop()
        out.add(pid)
        todo += children.get(pid, [])
    return out
