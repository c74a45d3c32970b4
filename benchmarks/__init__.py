"""Reproducible speed, memory and quality comparisons against the anchors."""
