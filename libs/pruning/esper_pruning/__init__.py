"""Removal on torch: importance scoring (Elesh) and structured cuts (probes as masks, lysis by Torch-Pruning)."""
