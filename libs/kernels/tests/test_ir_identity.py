"""A blueprint's id is the hash of what it computes: pinned for the built-ins, refused for unused ports."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from esper_contracts import BlueprintIR, TensorInterface, builtin_blueprints

# The demo's figures and every stored artifact id depend on these: a change to the hash breaks them.
PINNED = {
    "residual-mlp-bchw-32": "a534b86177823deb6e3cfe793fba34fc7510732c475d31e6fdc18ad986009124",
    "bottleneck-bchw-32": "502b82d84e76c4e498eba6be654ab362215c812376a79094a350fb122a21ba42",
    "depthwise-conv-32": "7e17c832e1afae6e72f37f7dac33b34ac3f7288d24ac3337f2de843bba5e22d8",
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
