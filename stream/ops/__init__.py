"""Operating a run: Prometheus metrics and health (`metrics`), results to MQTT (`mqtt`)."""
