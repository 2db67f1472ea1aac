"""Oona: the typed message bus client (memory:// and pulsar://)."""
