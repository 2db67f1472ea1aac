"""A blueprint's id is the hash of what it computes: pinned for the built-ins, the same for every spelling of the same
attributes, different for a different computation, refused for unused ports."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from esper_contracts import BlueprintIR, TensorInterface, builtin_blueprints

# The demo's figures and every stored artifact id depend on these: a change to the hash breaks them. The bottleneck
# and depthwise ids changed once, with canonical attributes (decision 0015).
PINNED = {
    "residual-mlp-bchw-32": "a534b86177823deb6e3cfe793fba34fc7510732c475d31e6fdc18ad986009124",
    "bottleneck-bchw-32": "4eab5230c6b116367b5b465e3ecc8b8fb1eb6de603362ad2ac8df67971e12920",
    "depthwise-conv-32": "a4ec1fb8b6d8b38b6afea4215d0aafaa34367000cb196729a6a008be9d23d33e",
    "low-rank-bchw-32": "8833ff6c2b774c897dfb7580260b005a684b25efd5685f03f518fc55525e59ce",
    "residual-mlp-bd-64": "32f961e86869f012d9369e248da41a53628ebae4cf72252bf2feefaac483e6bc",
    "bottleneck-bd-64": "0605bd48d357b0d5bcc46be70a00a4bd456838aee58c14f56c32392d5c4acab3",
    "low-rank-bd-64": "a0ac899c1357854948d88b561af2e2e86ada7a3497fb2925bc62dc0d9f065f52",
}


def test_the_built_in_blueprint_ids_do_not_change() -> None:
    irs = [*builtin_blueprints(TensorInterface(layout="BCHW", features=32)),
           *builtin_blueprints(TensorInterface(layout="BD", features=64))]
    assert {ir.name: ir.ir_hash() for ir in irs} == PINNED


@pytest.mark.parametrize("port", [1, 2**31 - 1, 2**70])
def test_an_edge_into_output_on_any_port_but_0_is_refused(port: int) -> None:
    body = builtin_blueprints(TensorInterface(layout="BD", features=64))[0].model_dump(mode="json")
    into_output = next(e for e in body["edges"] if e["dst"] == "output")
    into_output["port"] = port
    with pytest.raises(ValidationError) as exc:
        BlueprintIR.model_validate(body)
    assert "port" in str(exc.value)


def _variant(name: str, layout: str, features: int, edit: Any) -> BlueprintIR:
    """The built-in ``name`` for the interface, its JSON changed by ``edit(body)``."""
    ir = next(b for b in builtin_blueprints(TensorInterface(layout=layout, features=features)) if b.name == name)
    body = copy.deepcopy(ir.model_dump(mode="json"))
    edit(body)
    return BlueprintIR.model_validate(body)


def _node(body: dict[str, Any], op: str, index: int = 0) -> dict[str, Any]:
    node: dict[str, Any] = [n for n in body["nodes"] if n["op"] == op][index]
    return node


SAME_COMPUTATION = {
    "a linear's default bias and init left out": (
        "residual-mlp-bd-64", "BD", 64, lambda b: [_node(b, "linear")["attrs"].pop(k) for k in ("bias", "init")]),
    "normalized_shape as 64, not [64]": (
        "residual-mlp-bd-64", "BD", 64, lambda b: _node(b, "layer_norm")["attrs"].update(normalized_shape=64)),
    "conv2d's only padding and groups 1 written out": (
        "bottleneck-bchw-32", "BCHW", 32, lambda b: _node(b, "conv2d", 1)["attrs"].update(padding=1, groups=1)),
    "conv2d's default bias and init written out": (
        "bottleneck-bchw-32", "BCHW", 32, lambda b: _node(b, "conv2d", 1)["attrs"].update(bias=True, init="default")),
    "attention's default dropout as the integer 0": (
        "attention-head-12", "BTD", 12, lambda b: _node(b, "multihead_attention")["attrs"].update(dropout=0)),
}


@pytest.mark.parametrize("case", list(SAME_COMPUTATION))
def test_every_spelling_of_the_same_attributes_gets_the_same_id(case: str) -> None:
    name, layout, features, edit = SAME_COMPUTATION[case]
    original = _variant(name, layout, features, lambda b: None)
    respelled = _variant(name, layout, features, edit)
    assert respelled.model_dump() != original.model_dump()  # the edit did change the submitted IR
    assert respelled.ir_hash() == original.ir_hash()


def test_a_different_computation_gets_a_different_id() -> None:
    original = _variant("residual-mlp-bd-64", "BD", 64, lambda b: None)
    no_bias = _variant("residual-mlp-bd-64", "BD", 64, lambda b: _node(b, "linear")["attrs"].update(bias=False))
    wider_drop = _variant("attention-head-12", "BTD", 12,
                          lambda b: _node(b, "multihead_attention")["attrs"].update(dropout=0.1))
    assert no_bias.ir_hash() != original.ir_hash()
    assert wider_drop.ir_hash() != _variant("attention-head-12", "BTD", 12, lambda b: None).ir_hash()
