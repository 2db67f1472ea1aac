"""Esper emrakul service: plans structured pruning within its allowance, outside protected zones (Emrakul)."""
