"""Per-stack measuring adapters, each run as ``python -m`` in its own interpreter."""
