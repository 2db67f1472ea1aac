"""Shared service skeleton (settings, logging, health, metrics) and the esper CLI."""
