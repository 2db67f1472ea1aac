"""Esper urabrask service."""
