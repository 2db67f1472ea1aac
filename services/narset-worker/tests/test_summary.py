"""What Tamiyo reads in distributed mode: a summary packet that does not grow with the model."""

from __future__ import annotations

from esper_contracts import SeedStage, SeedTelemetry, SystemStatePacket, TensorInterface
from esper_narset_worker.summary import packet_for_tamiyo

BD = TensorInterface(layout="BD", features=8)


def full_packet(seeds_per_region: int, regions: int = 10) -> SystemStatePacket:
    seeds = [SeedTelemetry(layer_id=f"layer{r}", seed_index=i, epoch=3, stage=SeedStage.DORMANT, interface=BD,
                           gradient_norm=1.0 + (i * 7 % 13), chunk_variance=1.0)
             for r in range(regions) for i in range(seeds_per_region)]
    seeds[5] = seeds[5].model_copy(update={"stage": SeedStage.TRAINING})
    seeds[6] = seeds[6].model_copy(update={"stage": SeedStage.FOSSILIZED})
    seeds[7] = seeds[7].model_copy(update={"stage": SeedStage.CULLED, "embargo_until_epoch": 9})
    return SystemStatePacket(run_id="r", epoch=3, train_loss=1.0, val_loss=1.0, seeds=seeds)


def test_the_summary_keeps_live_seeds_the_sickest_candidates_and_every_regions_count() -> None:
    full = full_packet(100)
    summary = packet_for_tamiyo(full, candidates_per_region=2)
    assert summary.seeds_per_region == {f"layer{r}": 100 for r in range(10)}
    kept = {(t.layer_id, t.seed_index): t.stage for t in summary.seeds}
    assert kept[("layer0", 5)] is SeedStage.TRAINING and kept[("layer0", 7)] is SeedStage.CULLED
    assert ("layer0", 6) not in kept  # fossilized: nothing left to decide about it
    dormant = [t for t in summary.seeds if t.stage is SeedStage.DORMANT]
    assert len(dormant) == 2 * 10
    lowest_gradient = min(t.gradient_norm for t in full.seeds if t.layer_id == "layer3")
    assert any(t.layer_id == "layer3" and t.gradient_norm == lowest_gradient for t in dormant)  # the sickest


def test_the_summary_is_the_same_size_at_1k_and_100k_seeds() -> None:
    small = len(packet_for_tamiyo(full_packet(100), 4).model_dump_json())
    large = len(packet_for_tamiyo(full_packet(10_000), 4).model_dump_json())
    assert abs(large - small) / small < 0.10, (small, large)
