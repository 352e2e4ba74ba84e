"""khan: which pods, services, nodes and outside addresses are connected to which, from the kernel's conntrack."""

__version__ = "0.1.0"
