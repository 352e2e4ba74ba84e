"""`khan demo`: a lab of network namespaces shaped like a two-node cluster, traffic of every kind, and the agent.

command.py runs it. topology.py is the cluster as data, namespaces.py names and deletes the namespaces it lives
in, lab.py builds it and opens sockets in it, traffic.py opens the demo's flows, inventory.py describes the
cluster as the inventory file the agent reads. The kernel tests and benchmarks build the same lab.
"""
