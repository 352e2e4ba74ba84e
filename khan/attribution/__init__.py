"""Inventory + decoded flows -> labelled connections: who owns each address, how much of it the labels keep,
and the label sets of every family khan serves. Pure: no I/O, no metrics library."""
