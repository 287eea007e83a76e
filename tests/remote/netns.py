"""Other machines for tests: Linux network namespaces, each joined to this one by a veth pair.

`other_hosts.add()` makes a namespace with one veth end inside (10.213.X.Y+2/30) and the other end
here (10.213.X.Y+1/30), both up, `lo` up inside. A process started with `host.popen(argv)` sees
only its loopback and the link to this machine, so a socket that must be reached "from another
machine" is bound on `host.peer_address` here. Everything is removed at the end of the test, also
when it fails. Needs root and iproute2; tests are skipped with the reason where namespaces cannot
be made.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import pytest

SUBNET = ipaddress.ip_network("10.213.0.0/16")
IP_TIMEOUT_S = 20


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one `ip` command (iproute2) with a timeout."""
    proc = subprocess.run(
        ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT_S, check=False
    )
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc


@functools.cache
def unavailable() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if shutil.which("ip") is None:
        return "no 'ip' command (iproute2) to make network namespaces"
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    probe = f"ovst-probe-{secrets.token_hex(3)}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"cannot make a network namespace: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


@dataclass
class Host:
    """One namespace ("another machine") and the veth pair that links it to this one."""

    name: str
    """Namespace name (`ip netns exec NAME ...`)."""
    address: str
    """Its address inside the namespace, on the veth end there."""
    peer_address: str
    """This machine's address on the other veth end: what the namespace can reach."""
    link: str
    """Name of the veth end on this machine."""
    processes: list[subprocess.Popen] = field(default_factory=list)

    def command(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def popen(self, argv: Sequence[str], **kw) -> subprocess.Popen:
        """Start `argv` inside the namespace (stdout/stderr piped as text unless given); the
        caller waits with a timeout; it is killed at the end of the test if still running."""
        kw.setdefault("stdout", subprocess.PIPE)
        kw.setdefault("stderr", subprocess.PIPE)
        kw.setdefault("text", True)
        proc = subprocess.Popen(self.command(argv), **kw)
        self.processes.append(proc)
        return proc

    def run(self, argv: Sequence[str], timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        """Run `argv` inside the namespace to the end, output captured as text."""
        return subprocess.run(
            self.command(argv), capture_output=True, text=True, timeout=timeout, **kw
        )


def _used_networks() -> set[ipaddress.IPv4Network]:
    out = ip("-o", "-4", "addr", "show").stdout
    used = set()
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            iface = ipaddress.ip_interface(parts[parts.index("inet") + 1])
            used.add(ipaddress.ip_network(f"{iface.ip}/30", strict=False))
    return used


class Hosts:
    """Makes `Host`s with names unique to this test run and removes them all in `remove_all`."""

    def __init__(self) -> None:
        self.token = secrets.token_hex(3)
        self.hosts: list[Host] = []
        self._namespaces: list[str] = []
        self._links: list[str] = []

    def _free_network(self) -> ipaddress.IPv4Network:
        used = _used_networks()
        blocks = list(SUBNET.subnets(new_prefix=30))
        start = random.randrange(len(blocks))
        for block in blocks[start:] + blocks[:start]:
            if block not in used:
                return block
        raise RuntimeError(f"no free /30 left in {SUBNET}")

    def add(self) -> Host:
        index = len(self.hosts)
        name = f"ovst-{self.token}-{index}"
        here, there = f"ovh{self.token}{index}", f"ovn{self.token}{index}"
        net = self._free_network()
        peer_address, address = (str(a) for a in list(net.hosts())[:2])
        ip("netns", "add", name)
        self._namespaces.append(name)
        ip("link", "add", here, "type", "veth", "peer", "name", there, "netns", name)
        self._links.append(here)
        ip("addr", "add", f"{peer_address}/30", "dev", here)
        ip("link", "set", here, "up")
        ip("-n", name, "addr", "add", f"{address}/30", "dev", there)
        ip("-n", name, "link", "set", there, "up")
        ip("-n", name, "link", "set", "lo", "up")
        host = Host(name=name, address=address, peer_address=peer_address, link=here)
        self.hosts.append(host)
        return host

    def remove_all(self) -> None:
        """Kill what still runs in the namespaces, then delete namespaces and links."""
        for host in self.hosts:
            for proc in host.processes:
                if proc.poll() is None:
                    proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.communicate(timeout=10)
        for name in self._namespaces:
            ip("netns", "del", name, check=False)
        for link in self._links:  # gone with its peer's namespace, unless that failed
            if ip("link", "show", link, check=False).returncode == 0:
                ip("link", "del", link, check=False)
        self.hosts.clear()
        self._namespaces.clear()
        self._links.clear()


@pytest.fixture
def other_hosts() -> Iterator[Hosts]:
    """A factory of "other machines" (network namespaces), all removed after the test."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    hosts = Hosts()
    try:
        yield hosts
    finally:
        hosts.remove_all()
