"""Deterministic synthetic CXR phantoms in RSNA layout."""
