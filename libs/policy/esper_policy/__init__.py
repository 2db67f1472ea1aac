"""Tamiyo's control policies (heuristic v1) over contracts only: no torch."""
