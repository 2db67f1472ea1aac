"""Simic: trains Tamiyo's learned policy from real Esper runs.

A Gymnasium environment over real Tolaria runs (:mod:`esper_simic.env`), behaviour cloning of the heuristic
from recorded episodes, then MaskablePPO (:mod:`esper_simic.train`); the result is exported as a torch-free
policy artifact (:mod:`esper_policy.network`) that Tamiyo serves.
"""
