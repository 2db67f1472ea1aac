"""Mutation operators on BlueprintIR graphs, and the checked application of one to a parent."""

from .graph import EditableGraph, MutationRefused
from .mutate import KARN_TAG, Child, check_child, child_tags, mutate
from .operators import OPERATORS, MutationOperator

__all__ = ["KARN_TAG", "OPERATORS", "Child", "EditableGraph", "MutationOperator", "MutationRefused", "check_child",
           "child_tags", "mutate"]
