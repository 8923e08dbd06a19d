"""The proxy runtime: listeners, the HTTP connection manager, clusters, stats, admin (trio)."""
