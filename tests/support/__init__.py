"""What the tests and benchmarks share: the lab's agents, traffic, servers and recorded input."""
