"""The lab's cluster as data: two nodes, three pods, a ClusterIP service and a client outside the cluster::

    outside 192.0.2.10 --- 192.0.2.1 [node1] 10.250.0.1 ------- 10.250.0.2 [node2]
                                       cni0 10.244.1.1/24          cni0 10.244.2.1/24
                                       |-- pod-a 10.244.1.10       |-- pod-c 10.244.2.10
                                       `-- pod-b 10.244.1.11

Pods also have fd00:10:244:N::/64 addresses and the node link fd00:10:250::/64. Both nodes DNAT the ClusterIP
10.96.0.10:80 to pod-b:8080 in nat `prerouting` and `output` chains as kube-proxy does, and pass bridged traffic
through conntrack (`bridge-nf-call-iptables`). Nothing is masqueraded, so every pod sees the real client address.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Node:
    name: str
    ipv4: str  # InternalIP, on the link between the nodes
    ipv6: str
    gateway4: str  # the cni0 bridge's addresses, the pods' default gateways
    gateway6: str
    pod_cidr4: str
    pod_cidr6: str


@dataclass(frozen=True)
class Pod:
    name: str
    node: str
    ipv4: str
    ipv6: str
    namespace: str
    labels: dict[str, str]

    @property
    def veth(self) -> str:
        return f"veth-{self.name}"  # the node's end; the pod's end is eth0


NODES = (
    Node(
        "node1", "10.250.0.1", "fd00:10:250::1", "10.244.1.1", "fd00:10:244:1::1", "10.244.1.0/24", "fd00:10:244:1::/64"
    ),
    Node(
        "node2", "10.250.0.2", "fd00:10:250::2", "10.244.2.1", "fd00:10:244:2::1", "10.244.2.0/24", "fd00:10:244:2::/64"
    ),
)
PODS = (
    Pod("pod-a", "node1", "10.244.1.10", "fd00:10:244:1::10", "shop", {"app": "web"}),
    Pod("pod-b", "node1", "10.244.1.11", "fd00:10:244:1::11", "shop", {"app.kubernetes.io/name": "api"}),
    Pod("pod-c", "node2", "10.244.2.10", "fd00:10:244:2::10", "shop", {"app": "db"}),
)
OUTSIDE_IP = "192.0.2.10"
OUTSIDE_GATEWAY = "192.0.2.1"  # node1's end of the outside link
OUTSIDE_ROUTES = ("10.244.0.0/16", "10.96.0.0/12")  # the cluster's pod and service ranges, via node1
CLUSTER_IP = "10.96.0.10"
SERVICE_PORT = 80
SERVICE_BACKEND = ("10.244.1.11", 8080)  # pod-b
HOST_NETWORK_PORT = 9100  # node-exporter-abcde listens on node1's own address
HOSTS = ("node1", "node2", "outside", *(pod.name for pod in PODS))

NODES_BY_NAME = {node.name: node for node in NODES}

NODE_SYSCTLS = (
    ("net/ipv4/conf/all/rp_filter", "0"),  # inherited from the host otherwise; the lab routes need no filter
    ("net/ipv4/conf/default/rp_filter", "0"),
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv6/conf/all/forwarding", "1"),
    ("net/bridge/bridge-nf-call-iptables", "1"),  # bridged pod<->pod and hairpin DNAT replies reach conntrack
    ("net/bridge/bridge-nf-call-ip6tables", "1"),
    ("net/netfilter/nf_conntrack_acct", "1"),  # byte and packet counters, for flows created after this
)

NODE_RULESET = f"""
table ip khanlab {{
    chain prerouting {{
        type nat hook prerouting priority -100; policy accept;
        ip daddr {CLUSTER_IP} tcp dport {SERVICE_PORT} dnat to {SERVICE_BACKEND[0]}:{SERVICE_BACKEND[1]}
    }}
    chain output {{
        type nat hook output priority -100; policy accept;
        ip daddr {CLUSTER_IP} tcp dport {SERVICE_PORT} dnat to {SERVICE_BACKEND[0]}:{SERVICE_BACKEND[1]}
    }}
}}
table inet khanlab {{
    chain prerouting {{
        type filter hook prerouting priority 0; policy accept;
        ct state new counter
    }}
    chain output {{
        type filter hook output priority 0; policy accept;
        ct state new counter
    }}
}}
"""
