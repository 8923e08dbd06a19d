"""meshcore.testing: tools for testing meshcore plugins and configs (a pytest plugin)."""
