"""The artifact status machine, move by move."""

from __future__ import annotations

import pytest

from esper_contracts import KernelStatus as S
from esper_urza.transitions import LEGAL_MOVES, Decision, IllegalTransition, decide

ALL = list(S)


@pytest.mark.parametrize(("current", "requested"), [
    (None, S.PENDING), (None, S.COMPILED), (None, S.FAILED), (S.PENDING, S.COMPILING), (S.COMPILING, S.COMPILED),
    (S.COMPILING, S.FAILED), (S.FAILED, S.COMPILING), (S.FAILED, S.COMPILED), (S.COMPILED, S.VALIDATING),
    (S.COMPILED, S.VALIDATED), (S.VALIDATING, S.VALIDATED), (S.VALIDATING, S.REJECTED),
])
def test_forward_moves_apply(current: S | None, requested: S) -> None:
    assert decide("a", current, requested) is Decision.APPLY


@pytest.mark.parametrize("status", ALL)
def test_the_same_status_again_is_a_duplicate(status: S) -> None:
    assert decide("a", status, status) is Decision.DUPLICATE


@pytest.mark.parametrize(("current", "requested"), [
    (S.COMPILED, S.COMPILING), (S.VALIDATING, S.PENDING), (S.VALIDATED, S.COMPILED), (S.REJECTED, S.VALIDATING),
    (S.VALIDATED, S.FAILED), (S.COMPILED, S.FAILED), (S.COMPILING, S.PENDING),
])
def test_older_news_is_stale(current: S, requested: S) -> None:
    assert decide("a", current, requested) is Decision.STALE


@pytest.mark.parametrize(("current", "requested"), [
    (None, S.VALIDATED), (None, S.VALIDATING), (S.PENDING, S.VALIDATED), (S.FAILED, S.VALIDATED),
    (S.VALIDATED, S.REJECTED), (S.REJECTED, S.VALIDATED), (S.COMPILING, S.REJECTED),
])
def test_contradictions_are_illegal(current: S | None, requested: S) -> None:
    with pytest.raises(IllegalTransition) as info:
        decide("art-1", current, requested)
    assert "art-1" in str(info.value) and requested.value in str(info.value)


def test_terminal_states_have_no_moves() -> None:
    assert LEGAL_MOVES[S.VALIDATED] == LEGAL_MOVES[S.REJECTED] == frozenset()
    assert set(LEGAL_MOVES) == {None, *ALL}
