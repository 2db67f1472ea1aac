"""Esper urza service."""
