"""Esper narset-coordinator service."""
