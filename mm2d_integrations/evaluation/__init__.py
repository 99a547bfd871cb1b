"""Measure the depth x dimensions trade-off on your own data."""

__all__ = []
