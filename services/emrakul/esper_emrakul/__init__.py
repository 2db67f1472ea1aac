"""Esper emrakul service."""
