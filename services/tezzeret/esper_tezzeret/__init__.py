"""Esper tezzeret service."""
