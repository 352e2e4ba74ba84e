"""Counting what happens between polls: the connection tracker, cumulative counters and their bounds."""
