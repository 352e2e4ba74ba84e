"""Pure: the inventory's declared connection limits -> khan_connection_limit series, each destination named as
khan_connection names it under the label policy, so that the two divide by (dst_type, dst_ns, dst_name).

- A Service's limit is the Service's, whatever the policy.
- A pod's limit under `--aggregate pod` is the pod's. Under `--aggregate workload` khan_connection names every
  replica by its workload, so the workload's limit is the SUM of its live pods' limits: the replicas together
  accept that many. A workload of three pods declaring 100 each reads 300, and a rollout's extra pod raises it
  for as long as that pod is live, as the connections it accepts raise khan_connection.
"""

from __future__ import annotations

from khan.attribution.labels import LabelPolicy, capped
from khan.attribution.schema import Labels
from khan.inventory.index import Inventory


def declared_limits(inventory: Inventory, policy: LabelPolicy) -> dict[Labels, int]:
    """Label sets (LimitLabels' order) -> the declared limit, summed over the objects that share them."""
    workloads = policy.aggregate == "workload"
    series: dict[Labels, int] = {}
    for owner, value in inventory.limits:
        name = (owner.workload_name or owner.name) if workloads and owner.type == "pod" else owner.name
        labels = (owner.type, capped(owner.ns), capped(name))
        series[labels] = series.get(labels, 0) + value
    return series


def bounded(series: dict[Labels, int], max_series: int | None) -> tuple[dict[Labels, int], int]:
    """At most `max_series` series, the first in label order (a fixed choice: no series comes and goes with the
    values); and how many were left out. Limits are not summed into an overflow series: a sum of unrelated limits
    is no destination's."""
    if max_series is None or len(series) <= max_series:
        return series, 0
    kept = dict(sorted(series.items())[:max_series])
    return kept, len(series) - len(kept)
