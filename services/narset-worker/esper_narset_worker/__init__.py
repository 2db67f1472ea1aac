"""Esper narset-worker service."""
