"""Esper tamiyo service."""
