"""edge-runtime: language models for field devices with no internet."""

__version__ = "0.1.0"
