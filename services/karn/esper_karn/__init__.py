"""Esper karn service."""
