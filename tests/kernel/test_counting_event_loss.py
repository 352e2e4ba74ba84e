"""What lost events cost, said by the self-metrics and checked against the kernel's own account.

`khan agent` reads node1's table with a tiny event buffer and is stopped (SIGSTOP) while connections come and
go. With its baseline taken it listens to DESTROY events alone: 20 stay open (they send nothing; the resync dump
finds them), 200 open and close (their DESTROYs are lost, except the few that fit the buffer), and a dump by
`conntrack -L` removes those while the agent still sleeps, so nothing but their DESTROYs could have told it. Once
it runs again, the opened counter plus the bound `khan_connections_possibly_missed_total` must cover every
connection an independent `conntrack -E` saw opening, the bound must be the real number of connections missed (no
connection was counted twice, none invented), and the agent must stay up."""

from __future__ import annotations

import time
from pathlib import Path

from khan.demo.inventory import write_inventory
from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from khan.demo.topology import CLUSTER_IP, SERVICE_BACKEND, SERVICE_PORT
from tests.support.conntrack_recorder import Record, recording
from tests.support.host_agent import host_agent, total
from tests.support.netns import run_in
from tests.support.scripted_traffic import close, connect, exchange, scripted_server

POD_A = "10.244.1.10"
HELD, SHORT = 20, 200
TINY_BUFFER = "4096"  # the smallest the flag takes (the kernel doubles it): a handful of events fit
PAIR = {"src_ip": POD_A, "dst_ip": CLUSTER_IP, "dst_port": str(SERVICE_PORT)}


def to_service(record: Record) -> bool:
    return record.src == POD_A and record.dst == CLUSTER_IP and record.dport == SERVICE_PORT


def test_after_an_overflow_the_opened_count_and_the_bound_cover_every_connection(tmp_path: Path) -> None:
    inventory = tmp_path / "inventory.yaml"
    write_inventory(inventory)
    with Lab.create(prefix=private_prefix("khanloss")) as lab:
        run_in(lab, "node1", ["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_close=1"], check=True)
        with (
            scripted_server(lab, "pod-b", SERVICE_BACKEND) as backend,
            recording(lab.netns("node1")) as witness,
            host_agent(lab, inventory, tmp_path / "agent.log", "2", ["--event-buffer", TINY_BUFFER]) as agent,
        ):
            agent.pause()
            held = []
            try:
                held += [connect(lab, "pod-a", (CLUSTER_IP, SERVICE_PORT)) for _ in range(HELD)]
                for client in held:
                    exchange(client, 100, 200)
                for index in range(SHORT):
                    client = connect(lab, "pod-a", (CLUSTER_IP, SERVICE_PORT))
                    exchange(client, 100 + index, 300)
                    close(client, reset=True)
                time.sleep(1.3)  # the short ones' entries expire; a dump by another program removes them
                run_in(lab, "node1", ["conntrack", "-L"], capture_output=True, check=True)
                witness.wait_for(lambda record: to_service(record) and record.kind == "DESTROY", SHORT)
                resumed = time.time()
                agent.resume()

                # The resync dump, then the poll after it (which confirms the entries gone without a DESTROY).
                agent.poll_after(resumed + 0.1)
                text = agent.poll_after(time.time() + 0.1)
                opened = total(text, "khan_connections_opened_total", **PAIR)
                missed = total(text, "khan_connections_possibly_missed_total")
                dropped = total(text, "khan_events_dropped_total")
                recovered = total(text, "khan_connections_recovered_total")
                kernel_opened = sum(1 for record in witness.records(to_service) if record.kind == "NEW")
                figures = f"opened {opened}, possibly missed {missed}, dropped {dropped}, recovered {recovered}"
                assert kernel_opened == HELD + SHORT
                assert total(text, "khan_events_overflows_total") >= 1
                assert dropped >= SHORT // 2, figures  # a few DESTROYs fit the buffer; the rest were dropped
                assert opened <= kernel_opened, figures  # nothing counted twice
                assert opened >= HELD, figures  # the open ones were found by the resync dump
                assert recovered == 0, figures  # no NEW was lost: none was subscribed
                assert total(text, "khan_events_total", type="new") == 0, figures  # (the lab was idle at the start)
                assert opened + missed >= kernel_opened, figures  # the bound holds
                assert opened + missed == kernel_opened, figures  # and here, with no other traffic, it is exact
                assert backend.errors == []
            finally:
                for client in held:
                    client.close()
