"""Esper elesh service: scores the importance of the host's units at checkpoint boundaries (Elesh)."""
