"""`--inventory PATH`: a saved `kubectl get nodes,pods,services -A -o yaml` (or `-o json`) -> an Inventory.

Accepted: a `List` (or `NodeList`, `PodList`, `ServiceList`), single objects, several of either as a multi-document
YAML file, and a bare sequence of objects. JSON is read as YAML. Objects that are not Nodes, Pods or Services are
skipped by `build_inventory`; only a file that cannot be read or parsed, or whose top level is not objects, fails,
and then always with an InventoryError whatever went wrong inside the parser.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any, cast

import yaml

from khan.inventory.index import Inventory, build_inventory

# libyaml parses a large cluster's dump about ten times faster than the pure-Python loader.
_SAFE_LOADER: type[yaml.SafeLoader | yaml.CSafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# The safe loader, except that timestamps stay strings: Kubernetes objects hold RFC 3339 strings, never YAML
# timestamps, and an unquoted invalid date anywhere (`2024-02-30` in an annotation) would fail the whole file.
_LOADER = cast("type[yaml.SafeLoader | yaml.CSafeLoader]", type("KubernetesLoader", (_SAFE_LOADER,), {}))


def _timestamp_as_text(loader: yaml.SafeLoader | yaml.CSafeLoader, node: yaml.Node) -> str:
    return str(node.value)


_LOADER.add_constructor("tag:yaml.org,2002:timestamp", _timestamp_as_text)


class InventoryError(Exception):
    """The inventory file cannot be used; the message is one line naming the file and the problem."""


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Read and index an inventory file. An empty file is an empty inventory, not an error."""
    where = f"inventory file {os.fspath(path)}"
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as exc:
        raise InventoryError(f"{where}: cannot read it: {exc.strerror or exc}") from exc
    try:
        return build_inventory(_objects(yaml.load_all(data, Loader=_LOADER), where))
    except InventoryError:
        raise
    except yaml.YAMLError as exc:
        raise InventoryError(f"{where}: {_describe(exc)}") from exc
    except Exception as exc:  # a value the parser cannot build (an int of 5,000 digits), nesting too deep, ...
        raise InventoryError(f"{where}: cannot load it: {_one_line(exc)}") from exc


def _objects(documents: Iterable[Any], where: str) -> Iterator[Any]:
    """Parsed documents -> the objects in them, list items unwrapped. Items are not checked here."""
    for number, document in enumerate(documents, 1):
        if document is None:  # an empty document, e.g. after a trailing `---`
            continue
        if isinstance(document, list):
            yield from document
            continue
        if not isinstance(document, dict):
            raise InventoryError(
                f"{where}: document {number} is a {type(document).__name__}, expected a Kubernetes object or List"
            )
        kind = document.get("kind")
        if "items" not in document or not (kind is None or (isinstance(kind, str) and kind.endswith("List"))):
            yield document
            continue
        items = document["items"]
        if items is None:  # how an empty List can look after a round trip through other tools
            continue
        if not isinstance(items, list):
            raise InventoryError(f"{where}: document {number} has 'items' of type {type(items).__name__}, not a list")
        # The API leaves kind out of a typed list's items (a PodList's items are Pods); kubectl fills it in.
        item_kind = kind[: -len("List")] if isinstance(kind, str) and kind != "List" else None
        for item in items:
            if item_kind and isinstance(item, dict) and "kind" not in item:
                item = {**item, "kind": item_kind}
            yield item


def _one_line(exc: Exception) -> str:
    text = " ".join(str(exc).split())[:300]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _describe(exc: yaml.YAMLError) -> str:
    """A parser error -> one line, with the position when the parser knows it."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        problem = " ".join((exc.problem or exc.context or "syntax error").split())
        return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return "invalid YAML: " + " ".join(str(exc).split())
