"""Urza's admission check: its local limits, and the shared inference's refusals as BlueprintRejected.

The op rules themselves are tested with the shared inference, in ``contracts/tests/test_ir_shapes.py``.
"""

from __future__ import annotations

import pytest

from esper_contracts import BlueprintClass, BlueprintIR, IREdge, IRNode, OpType, TensorInterface
from esper_urza.shapes import BlueprintRejected, check_blueprint


def linear(features: int, out_features: int, in_features: int | None = None) -> BlueprintIR:
    """input (``features`` wide) -> linear -> output (``features`` wide) on BD."""
    return BlueprintIR(name="t", blueprint_class=BlueprintClass.MLP,
                       nodes=[IRNode(id="n0", op=OpType.LINEAR,
                                     attrs={"in_features": in_features or features,
                                            "out_features": out_features})],
                       edges=[IREdge(src="input", dst="n0"), IREdge(src="n0", dst="output")],
                       input=TensorInterface(layout="BD", features=features),
                       output=TensorInterface(layout="BD", features=features))


def test_a_buildable_blueprint_reports_its_parameters_and_features() -> None:
    report = check_blueprint(linear(8, 8))
    assert report.parameter_count == 8 * 8 + 8
    assert report.features == {"input": 8, "n0": 8}


def test_shape_errors_are_rejections_with_the_reason() -> None:
    with pytest.raises(BlueprintRejected, match=r"node 'n0' \(linear\): in_features=8 but its input has 6 features"):
        check_blueprint(linear(6, 6, in_features=8))
    with pytest.raises(BlueprintRejected, match="produces 4 features at the output but the output interface declares"):
        check_blueprint(linear(8, 4))


def test_size_limits_are_configurable() -> None:
    ir = linear(64, 64)
    with pytest.raises(BlueprintRejected, match="more than 4000 parameters"):
        check_blueprint(ir, max_parameters=4000)
    with pytest.raises(BlueprintRejected, match="this Urza accepts at most 0"):
        check_blueprint(ir, max_nodes=0)
    with pytest.raises(BlueprintRejected, match=r"\['linear'\]"):
        check_blueprint(ir, allowed_ops=[OpType.RELU])
    assert check_blueprint(ir, max_parameters=64 * 65).parameter_count == 64 * 65
