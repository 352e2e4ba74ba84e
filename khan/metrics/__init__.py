"""From decoded flows to Prometheus exposition: the snapshot, the metric declarations, the collector."""
