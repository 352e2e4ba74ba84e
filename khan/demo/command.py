"""`khan demo`: the lab of network namespaces, traffic of every kind, and the agent reading node1's table.

The agent's HTTP server stays in the caller's namespace (so the printed URL works from this shell) while its
polls read node1's conntrack table through --netns. Everything is removed on exit or Ctrl-C.
"""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import replace
from pathlib import Path

from khan.app import Agent
from khan.attribution.schema import ConnectionLabels
from khan.demo.inventory import write_inventory
from khan.demo.lab import Lab
from khan.demo.topology import HOSTS
from khan.demo.traffic import start_demo_traffic
from khan.settings import Settings

REFRESH_SECONDS = 20.0  # UDP entries that saw one reply expire after 30 s: renew them so the demo keeps them


def run_demo(settings: Settings) -> None:
    with Lab.create() as lab, tempfile.TemporaryDirectory(prefix="khan-demo-") as workdir:
        expected = start_demo_traffic(lab)
        inventory = Path(workdir) / "inventory.yaml"
        write_inventory(inventory)
        agent = Agent(replace(settings, inventory=str(inventory), node_name="node1", netns=lab.netns("node1")))
        host = settings.listen_host or "localhost"
        url = f"http://{host}:{settings.listen_port}/metrics"
        print(f"lab namespaces: {' '.join(lab.netns(host) for host in HOSTS)}")
        print(f"inventory: {inventory}")
        print("connections opened (node1 is the node the agent watches):")
        for entry in expected:
            if entry.node == "node1":
                print(f"  {entry.kind:38} {entry.src_ip} -> {entry.dst_ip}:{entry.dst_port} {entry.transport}")
        asyncio.run(_serve(agent, lab, url))


async def _serve(agent: Agent, lab: Lab, url: str) -> None:
    await agent.start()

    async def announce() -> None:
        while agent.health.last is None:
            await asyncio.sleep(0.1)
        print("\nkhan_connection series on node1 (src -> dst, port, transport, state, seen_from, count):")
        for values, count in sorted(agent.health.last.connections.items()):
            c = ConnectionLabels._make(values)
            source = f"{c.src_type} {c.src_ns + '/' if c.src_ns else ''}{c.src_name or c.src_ip}"
            target = f"{c.dst_type} {c.dst_ns + '/' if c.dst_ns else ''}{c.dst_name or c.dst_ip}"
            port = c.dst_port or "-"
            print(f"  {source:28} -> {target:28} {port:>5} {c.transport:6} {c.state:12} {c.seen_from:11} {count}")
        print(f"\nmetrics: {url}   (curl -s {url} | grep khan_connection)")
        print("Ctrl-C stops the agent and removes the lab.")

    async def refresh() -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            await asyncio.to_thread(lab.udp_exchange, "pod-a", "10.244.2.10", 53, True)

    helpers = [asyncio.create_task(announce()), asyncio.create_task(refresh())]
    try:
        await agent.run()
    finally:
        for task in helpers:
            task.cancel()
