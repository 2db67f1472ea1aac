"""Urza's persistence: table definitions, and small query modules that take a connection and return contracts."""
