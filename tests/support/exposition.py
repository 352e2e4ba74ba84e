"""Running the real `khan` command and reading what it prints."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from khan.attribution.schema import CONNECTION_LABELS
from khan.demo.inventory import write_inventory
from khan.demo.lab import Lab
from khan.demo.namespaces import private_prefix
from khan.demo.traffic import start_demo_traffic

KHAN = [sys.executable, "-m", "khan"]

# A khan_connection series as the tests write it: every label but `node` and `seen_from`, in CONNECTION_LABELS
# order (seen_from has tests of its own).
Series = tuple[str, ...]
SERIES_LABELS = tuple(name for name in CONNECTION_LABELS[1:] if name != "seen_from")


def khan(args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KHAN, *args], capture_output=True, text=True, timeout=timeout, check=False)


def samples(exposition: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    found: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(exposition):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def connections(exposition: str, node: str, with_seen_from: bool = False) -> dict[Series, int]:
    """khan_connection series of `node`, as label tuples without the node (and, unless asked, seen_from)."""
    names = (*SERIES_LABELS, "seen_from") if with_seen_from else SERIES_LABELS
    out: dict[Series, int] = {}
    for labels, value in samples(exposition, "khan_connection").items():
        as_dict = dict(labels)
        assert as_dict["node"] == node
        key = tuple(as_dict[name] for name in names)
        out[key] = out.get(key, 0) + int(value)
    return out


def value(exposition: str, name: str) -> float:
    (found,) = samples(exposition, name).values()
    return found


@contextlib.contextmanager
def lab_with_traffic(prefix: str, directory: Path) -> Iterator[tuple[Lab, Path]]:
    """The lab with its demo traffic flowing and its inventory written to directory/inventory.yaml."""
    inventory = directory / "inventory.yaml"
    with Lab.create(prefix=private_prefix(prefix)) as lab:
        start_demo_traffic(lab)
        write_inventory(inventory)
        yield lab, inventory
