"""Who owns an IP address: Kubernetes nodes, pods and services projected into an address index."""
