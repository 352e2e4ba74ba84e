"""nf_conntrack_acct off: the agent says so once in the log, serves the gauge at 0 and no byte counters, and
leaves the sysctl alone; only --enable-accounting turns it on, and the agent logs that it did."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.lab_agent import file_agent, total
from tests.support.table_fill import table_namespace


def acct(netns: str) -> str:
    command = ["ip", "netns", "exec", netns, "sysctl", "-n", "net.netfilter.nf_conntrack_acct"]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout.strip()


def test_accounting_off_is_reported_and_left_alone_unless_asked(tmp_path: Path) -> None:
    inventory = tmp_path / "empty.yaml"
    inventory.write_text("apiVersion: v1\nkind: List\nitems: []\n")
    with table_namespace(f"khanacct{id(tmp_path) % 10_000}") as netns:
        assert acct(netns) == "0"
        with file_agent(netns, inventory, "node1", tmp_path) as agent:
            agent.wait_ready()
            agent.wait_until(lambda: total(agent.metrics(), "khan_polls_total") >= 3, 10, "three polls")
            text = agent.metrics()
            assert total(text, "khan_conntrack_accounting_enabled") == 0
            assert "# TYPE khan_flow_bytes_total" not in text
            assert "khan_connections_opened_total" in text  # the other counters do not need accounting
            warnings = [line for line in agent.log() if line.get("event") == "accounting_off"]
            assert len(warnings) == 1, warnings
            assert "--enable-accounting" in warnings[0]["fix"]
        assert acct(netns) == "0"  # untouched

        with file_agent(netns, inventory, "node1", tmp_path, extra=["--enable-accounting"]) as agent:
            agent.wait_ready()
            assert acct(netns) == "1"
            assert [line["sysctl"] for line in agent.log() if line.get("event") == "accounting_enabled"] == [
                "net.netfilter.nf_conntrack_acct=1"
            ]
            agent.wait_until(lambda: "# TYPE khan_flow_bytes_total counter" in agent.metrics(), 10, "byte counters")
            assert total(agent.metrics(), "khan_conntrack_accounting_enabled") == 1
