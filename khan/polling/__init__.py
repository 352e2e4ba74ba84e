"""One poll: the conntrack table dumped, attributed and counted -> an immutable PollResult for the metrics."""
