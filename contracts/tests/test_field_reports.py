"""The one metric rule and the one FieldReport builder."""

from __future__ import annotations

import pytest

from esper_contracts import ArtifactId, Outcome, SystemStatePacket, field_report, validation_metric

KERNEL = ArtifactId("b" * 64, "cpu", "eager", "c" * 16)


def test_the_metric_is_accuracy_when_measured_else_minus_the_loss() -> None:
    assert validation_metric(0.75, 0.3) == 0.75
    assert validation_metric(0.0, 0.3) == 0.0  # a measured accuracy of zero is still the accuracy
    assert validation_metric(None, 0.3) == -0.3
    with pytest.raises(ValueError, match="neither val_accuracy nor val_loss"):
        validation_metric(None, None)
    packet = SystemStatePacket(run_id="r", epoch=3, train_loss=1.0, val_loss=0.5)
    assert packet.validation_metric == -0.5
    assert packet.model_copy(update={"val_accuracy": 0.9}).validation_metric == 0.9


def test_a_report_counts_epochs_since_germination_and_keeps_its_metrics() -> None:
    report = field_report(seed_id="fc1[0]", outcome=Outcome.FOSSILIZED, kernel_artifact_id=KERNEL, pre_metric=0.5,
                          post_metric=0.7, epoch=12, germinated_epoch=4, blueprint_id="a" * 64, run_id="run",
                          eval_metrics={"baseline": 0.5})
    assert (report.blueprint_id, report.kernel_artifact_id, report.seed_id, report.run_id) == (
        "a" * 64, KERNEL, "fc1[0]", "run")
    assert (report.pre_metric, report.post_metric, report.epochs_active) == (0.5, 0.7, 8)
    assert report.eval_metrics == {"baseline": 0.5} and report.outcome is Outcome.FOSSILIZED


def test_without_a_blueprint_id_the_kernel_id_names_it_else_it_is_unknown() -> None:
    common = {"seed_id": "fc1[0]", "outcome": Outcome.CANCELLED, "pre_metric": 0.1, "post_metric": 0.1, "epoch": 5}
    assert field_report(kernel_artifact_id=KERNEL, germinated_epoch=None, **common).blueprint_id == "b" * 64
    assert field_report(kernel_artifact_id="fake-kernel", germinated_epoch=None, **common).blueprint_id == "unknown"
    assert field_report(kernel_artifact_id=None, germinated_epoch=None, **common).blueprint_id == "unknown"
    # never germinated: no active epochs; a clock that went backwards (restored run) never goes negative
    assert field_report(kernel_artifact_id=None, germinated_epoch=None, **common).epochs_active == 0
    assert field_report(kernel_artifact_id=None, germinated_epoch=9, **common).epochs_active == 0
