"""Esper's recipes: the standalone demo, the multi-seed proof of value, run reports and the demo tasks.

Run them as modules (``python -m esper_recipes.demo``, ``python -m esper_recipes.proof``) or through
``make demo`` / ``make proof``. They are ordinary users of the SDK (``import esper``); nothing in the SDK or
the services imports them.
"""
