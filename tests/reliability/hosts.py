"""Several hosts on one machine: Linux network namespaces joined by veth pairs, addresses from 192.0.2.0/24
(TEST-NET-1, never routed anywhere). Made and removed by the test itself; needs root (CI runs as root).

    with Hosts({"hub": None, "work": "hub", "third": "hub"}) as hosts:   # host -> the host it is wired to
        hosts.address("work", "hub")      # the hub's address as `work` reaches it: "192.0.2.1"
        hosts.popen("work", ["selfplay", "up", ...])
        hosts.link("work", "hub", up=False)   # a partition: `work` loses its link to the hub
"""

from __future__ import annotations

import os
import shutil
import subprocess


class NoNamespaces(Exception):
    """Network namespaces cannot be made here (not root, no iproute2): the caller skips, saying so."""


class Hosts:
    def __init__(self, wiring: dict[str, str | None]) -> None:
        self.tag = os.urandom(3).hex()
        self.wiring = wiring
        self.names = {host: f"sp-{self.tag}-{host}" for host in wiring}
        self.addresses: dict[tuple[str, str], str] = {}  # (host, peer) -> host's address on the link to peer
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Hosts:
        if os.geteuid() != 0 or shutil.which("ip") is None:
            raise NoNamespaces("network namespaces need root and iproute2 (`ip`)")
        try:
            for ns in self.names.values():
                self._ip("netns", "add", ns)
                self._ip("-n", ns, "link", "set", "lo", "up")
            for i, (host, peer) in enumerate((h, p) for h, p in self.wiring.items() if p is not None):
                # a /30 per link: .1/.2, .5/.6, ... (peer gets the lower address)
                mine, theirs = f"192.0.2.{4 * i + 2}", f"192.0.2.{4 * i + 1}"
                self._ip("-n", self.names[peer], "link", "add", f"to-{host}", "type", "veth", "peer", "name",
                         f"to-{peer}", "netns", self.names[host])
                self._ip("-n", self.names[peer], "addr", "add", f"{theirs}/30", "dev", f"to-{host}")
                self._ip("-n", self.names[host], "addr", "add", f"{mine}/30", "dev", f"to-{peer}")
                self._ip("-n", self.names[peer], "link", "set", f"to-{host}", "up")
                self._ip("-n", self.names[host], "link", "set", f"to-{peer}", "up")
                self.addresses[(host, peer)], self.addresses[(peer, host)] = mine, theirs
        except (subprocess.CalledProcessError, OSError) as e:
            self.__exit__()
            raise NoNamespaces(f"cannot make network namespaces: {e}") from None
        return self

    def __exit__(self, *_: object) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
        for ns in self.names.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # its veth ends go with it

    def address(self, host: str, peer: str) -> str:
        """The address of `peer` as `host` reaches it (its end of their link)."""
        return self.addresses[(peer, host)]

    def command(self, host: str, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.names[host], *argv]

    def popen(self, host: str, argv: list[str], **kwargs) -> subprocess.Popen:
        proc = subprocess.Popen(self.command(host, argv), **kwargs)
        self.procs.append(proc)
        return proc

    def run(self, host: str, argv: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(host, argv), **kwargs)

    def link(self, host: str, peer: str, up: bool) -> None:
        """Bring `host`'s end of its link to `peer` up or down (down: a network partition between them)."""
        self._ip("-n", self.names[host], "link", "set", f"to-{peer}", "up" if up else "down")

    @staticmethod
    def _ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, text=True)
