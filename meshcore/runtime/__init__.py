"""The proxy runtime: listeners, clusters, stats, admin, config sources (trio)."""
