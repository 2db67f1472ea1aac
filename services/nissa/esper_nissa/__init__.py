"""Esper nissa service."""
