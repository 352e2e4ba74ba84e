"""Reading the kernel's connection-tracking table: netlink I/O, decoding, table statistics."""
