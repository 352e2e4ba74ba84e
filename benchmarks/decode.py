"""The conntrack decoder's hot paths on recorded bytes, no kernel needed: what a full table and an event stream
cost to decode.

The five entries of tests/fixtures/netlink/lab_dump.bin (TCP and UDP over IPv4 and IPv6, ICMP; accounting on)
are repeated into a table of --entries entries, packed into buffers of ~32 KiB as the kernel batches a dump.
Reported, as the median CPU time of --runs runs, in ms per table:
- dump: decode_chunk over every buffer with fresh templates, as one dump_flows call does;
- events: one decode_chunk call per message, as the event reader receives them, NEW and DESTROY alternating;
- walk: decode_entry on every entry (the attribute walk a template saves; what an unknown shape costs);
- compile: _compile_template of each recorded shape, for a tenth of the table's entries (in service: once per
  shape per dump; the fuzz tests lean on it).

With --before FILE (the decode.py of another checkout), that decoder is timed too, its runs alternating with
this checkout's (and which goes first alternating as well) so that a busy machine weighs on both alike. Timing
this checkout against its own decode.py shows the harness's noise: a few percent either way.

    .venv/bin/python benchmarks/decode.py [--entries 262144] [--runs 7] [--before /tmp/base/khan/conntrack/decode.py]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from khan.conntrack import decode

RECORDED_DUMP = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "netlink" / "lab_dump.bin"
BATCH_BYTES = 32 * 1024
NLMSG_HDRLEN = 16
CT_DELETE_TYPE = (1 << 8) | 2


def recorded_messages() -> list[bytes]:
    """The entry messages of the recorded dump's first buffer (framing included)."""
    data = RECORDED_DUMP.read_bytes()
    (length,) = struct.unpack_from("<I", data, 0)
    buf = data[4 : 4 + length]
    messages, pos = [], 0
    while pos + NLMSG_HDRLEN <= len(buf):
        (mlen,) = struct.unpack_from("=I", buf, pos)
        messages.append(buf[pos : pos + ((mlen + 3) & ~3)])
        pos += (mlen + 3) & ~3
    return messages


def dump_buffers(messages: list[bytes], entries: int) -> list[bytes]:
    buffers: list[bytes] = []
    current: list[bytes] = []
    size = 0
    for i in range(entries):
        message = messages[i % len(messages)]
        if size + len(message) > BATCH_BYTES:
            buffers.append(b"".join(current))
            current, size = [], 0
        current.append(message)
        size += len(message)
    buffers.append(b"".join(current))
    return buffers


def as_destroy(message: bytes) -> bytes:
    return message[:4] + struct.pack("=H", CT_DELETE_TYPE) + message[6:]


def workloads(module: ModuleType, entries: int) -> dict[str, Callable[[], int]]:
    """Each measured path of one decoder module; each call returns how many entries it decoded."""
    messages = recorded_messages()
    buffers = dump_buffers(messages, entries)
    bodies = [(message, NLMSG_HDRLEN, struct.unpack_from("=I", message)[0]) for message in messages]
    events = [message if i % 2 else as_destroy(message) for i, message in enumerate(messages * 2)]
    flows = [module.decode_entry(buf, start, end) for buf, start, end in bodies]

    def dump() -> int:
        decoded: list[Any] = []
        templates: dict[int, list[Any]] = {}
        for buf in buffers:
            module.decode_chunk(buf, len(buf), decoded, templates)
        return len(decoded)

    def event_stream() -> int:
        opened: list[Any] = []
        destroyed: list[Any] = []
        templates: dict[int, list[Any]] = {}
        for i in range(entries):
            message = events[i % len(events)]
            module.decode_chunk(message, len(message), opened, templates, destroyed)
        return len(opened) + len(destroyed)

    def walk() -> int:
        for i in range(entries):
            buf, start, end = bodies[i % len(bodies)]
            module.decode_entry(buf, start, end)
        return entries

    def compile_shapes() -> int:
        compiled = 0
        for i in range(entries // 10):
            buf, start, end = bodies[i % len(bodies)]
            compiled += module._compile_template(buf, start, end, flows[i % len(flows)]) is not None
        return compiled

    return {"dump": dump, "events": event_stream, "walk": walk, "compile": compile_shapes}


def load_decoder(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("decode_before", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # NamedTuple and dataclass definitions look their module up
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=262_144)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--before", type=Path, help="another decode.py, timed side by side")
    args = parser.parse_args()
    decoders = {"after": decode} if args.before is None else {"before": load_decoder(args.before), "after": decode}
    paths = {name: workloads(module, args.entries) for name, module in decoders.items()}
    print(f"{args.entries} entries, median CPU ms of {args.runs} runs")
    for path in paths["after"]:
        times: dict[str, list[float]] = {name: [] for name in decoders}
        counted = {}
        for run in range(args.runs):
            for name in list(decoders)[:: 1 if run % 2 else -1]:  # who runs first alternates too
                started = time.process_time()
                counted[name] = paths[name][path]()
                times[name].append((time.process_time() - started) * 1000)
        figures = "  ".join(f"{name} {statistics.median(runs):8.1f}" for name, runs in times.items())
        print(f"{path:8} {figures}  (decoded {', '.join(str(n) for n in counted.values())})")


if __name__ == "__main__":
    main()
