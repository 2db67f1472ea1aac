"""Esper elesh service."""
