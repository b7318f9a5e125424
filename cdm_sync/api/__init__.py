"""HTTP edges of the service: today the health/metrics/admin endpoint; the REST API later."""
