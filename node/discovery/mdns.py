"""mDNS / DNS-SD with python-zeroconf: advertise this node, browse for the others.

The node registers `<name>-<id8>._jobmesh._tcp.local.` (SRV: its gRPC port; A: its IPv4
endpoints; TXT: `id`, `protover`, `cluster`, `name`, `ca` (the short CA fingerprint; nodes of
another cluster are ignored)), so standard DNS-SD tools
(`avahi-browse _jobmesh._tcp`, `dns-sd -B _jobmesh._tcp`) list it. Browsing reports every
other node's address and id; additions and updates become joins (a Sync), removals a
probe. mDNS never decides liveness: records stay cached after a crash, and a goodbye can be
lost; the membership protocol decides.

Zeroconf runs on the node's event loop (`use_asyncio=True`: no threads of its own).
A new node is found both ways: its browser finds the nodes already there, and its
announcement (sent at once, without name probing) makes them contact it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Callable, Sequence
from typing import Any

from zeroconf import InterfaceChoice, IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from node.discovery.identity import (
    PROTOCOL_VERSION,
    SERVICE_TYPE,
    InstanceInfo,
    format_endpoint,
    split_endpoint,
)

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_MS = 1500
MAX_LABEL_BYTES = 63
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")

PeerFound = Callable[[str, str], None]
"""`(address, instance_id)` of a node mDNS found or updated; called on the event loop."""
PeerGone = Callable[[str], None]
"""`instance_id` of a node whose mDNS record went away; called on the event loop."""


def instance_label(info: InstanceInfo) -> str:
    """The DNS-SD instance name: `<name>-<first 8 of id>`, at most 63 bytes."""
    suffix = "-" + info.id[:8]
    name = _UNSAFE.sub("-", info.name).strip("-") or "jobmesh"
    return name.encode()[: MAX_LABEL_BYTES - len(suffix)].decode(errors="ignore") + suffix


class MdnsDiscovery:
    """Advertises this node and browses for peers. Start and stop it on the node's event loop."""

    def __init__(
        self,
        info: InstanceInfo,
        interface_addresses: Sequence[str],
        on_found: PeerFound,
        on_gone: PeerGone,
        fingerprint: str = "",
    ) -> None:
        self.info = info
        self._fingerprint = fingerprint
        """Short CA fingerprint, advertised as TXT `ca`; advertisements with another are ignored."""
        self._foreign: set[str] = set()
        self._interfaces = list(interface_addresses)
        self._on_found = on_found
        self._on_gone = on_gone
        self._zeroconf: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._service: AsyncServiceInfo | None = None
        self._ids_by_name: dict[str, str] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> None:
        """Open the mDNS sockets, start browsing, and register this node (in the background)."""
        interfaces: Any = self._interfaces or InterfaceChoice.All
        zeroconf = Zeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only, use_asyncio=True)
        self._zeroconf = AsyncZeroconf(zc=zeroconf)
        _, port = split_endpoint(self.info.address)
        addresses = []
        for endpoint in self.info.endpoints:
            endpoint_host, _ = split_endpoint(endpoint)
            try:
                addresses.append(socket.inet_aton(endpoint_host))
            except OSError:
                continue  # a hostname or an IPv6 endpoint: not an A record
        self._service = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{instance_label(self.info)}.{SERVICE_TYPE}",
            port=port,
            addresses=addresses,
            properties={
                "id": self.info.id,
                "protover": str(PROTOCOL_VERSION),
                "cluster": self.info.cluster,
                "name": self.info.name,
                "ca": self._fingerprint,
            },
            server=f"jobmesh-{self.info.id[:8]}-{port}.local.",
        )
        self._browser = AsyncServiceBrowser(zeroconf, SERVICE_TYPE, handlers=[self._on_change])
        self._spawn(self._register(), "register")
        log.info(
            "mDNS: advertising %s on %s", self._service.name, ", ".join(self._interfaces) or "all interfaces"
        )

    async def _register(self) -> None:
        if self._zeroconf is None or self._service is None:
            return
        # No name probing (cooperating_responders): it takes over a second, and the name
        # carries the instance id, so it cannot clash with another node's. Only a copied data
        # dir could clash, and the membership protocol refuses that node. Announcing at once
        # lets every node on the LAN contact this one within milliseconds, whatever the
        # state of its own browsing (RFC 6762 holds back repeated answers for a second).
        announced = await self._zeroconf.async_register_service(self._service, cooperating_responders=True)
        await announced

    async def stop(self) -> None:
        """Unregister (goodbye packets), stop browsing, close the sockets."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._zeroconf is not None:
            await self._zeroconf.async_close()
            self._zeroconf = None

    def _spawn(self, coroutine: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=f"mdns-{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("mDNS task %s failed: %s", task.get_name(), task.exception())

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        """Browser callback (on the event loop)."""
        if self._service is not None and name == self._service.name:
            return
        if state_change is ServiceStateChange.Removed:
            instance_id = self._ids_by_name.pop(name, None)
            if instance_id is not None:
                self._on_gone(instance_id)
            return
        self._spawn(self._resolve(service_type, name), "resolve")

    async def _resolve(self, service_type: str, name: str) -> None:
        if self._zeroconf is None:
            return
        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(self._zeroconf.zeroconf, RESOLVE_TIMEOUT_MS):
            log.debug("mDNS: could not resolve %s", name)
            return
        properties = {
            (k.decode(errors="replace") if isinstance(k, bytes) else str(k)): (
                v.decode(errors="replace") if isinstance(v, bytes) else ""
            )
            for k, v in info.properties.items()
        }
        instance_id = properties.get("id", "")
        addresses = info.parsed_addresses(IPVersion.V4Only)
        if not instance_id or not addresses or not info.port:
            log.debug("mDNS: %s is not a Jobmesh node (no id, address or port)", name)
            return
        if self._fingerprint and properties.get("ca", "") != self._fingerprint:
            if name not in self._foreign:  # once per advertisement, not on every refresh
                self._foreign.add(name)
                log.info("mDNS: ignoring %s: another cluster (CA %r)", name, properties.get("ca", ""))
            return
        self._ids_by_name[name] = instance_id
        self._on_found(format_endpoint(addresses[0], info.port), instance_id)
