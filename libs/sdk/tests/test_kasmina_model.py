"""wrap / unwrap on an MLP, a small CNN and small transformers; targeting rules; telemetry; placement."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper.kasmina import (
    KasminaConfig,
    KasminaLayer,
    collect_telemetry,
    host_parameter_count,
    kasmina_layers,
    seed_parameter_count,
    unwrap,
    wrap,
)
from esper.kasmina.testing import Driver, fast_config, kernel_for, mlp
from esper_contracts import SeedStage, TensorInterface
from esper_kernels import LocalKernelLibrary

S = SeedStage


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 12, 3, padding=1),
                                      nn.ReLU())
        self.head = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class SmallTransformer(nn.Module):
    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.batch_first = batch_first
        self.embed = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=batch_first)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, T, 6)
        h = self.embed(x)
        h = self.encoder(h if self.batch_first else h.transpose(0, 1))
        return self.head(h if self.batch_first else h.transpose(0, 1))


CASES = {
    "mlp": (lambda: mlp(), KasminaConfig(), lambda: torch.randn(6, 8), "0", "BD"),
    "cnn": (SmallCNN, KasminaConfig(target_types=["Conv2d"]), lambda: torch.randn(2, 3, 6, 6), "features.2",
            "BCHW"),
    "transformer": (SmallTransformer, KasminaConfig(target_types=["TransformerEncoderLayer"]),
                    lambda: torch.randn(2, 5, 6), "encoder.layers.1", "BTD"),
    "seq_first_transformer": (lambda: SmallTransformer(batch_first=False),
                              KasminaConfig(target_types=["TransformerEncoderLayer"]), lambda: torch.randn(2, 5, 6),
                              "encoder.layers.0", "BTD"),
}
FAMILY = {"BD": "bottleneck", "BCHW": "depthwise_conv", "BTD": "attention_head"}


@pytest.mark.parametrize("case", list(CASES))
def test_wrap_grow_and_unwrap(case: str) -> None:
    make, config, make_x, slot, layout = CASES[case]
    bare = make()
    x = make_x()
    bare.eval()
    with torch.no_grad():
        expected = bare(x)
    lib = LocalKernelLibrary()
    model = wrap(make(), config.model_copy(update=fast_config(chunks_per_layer=2).model_dump(
        exclude={"target_types", "target_modules"})), lib)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), expected)  # every seed DORMANT: exact identity
    model.train()
    model(x)
    tel = {(t.layer_id, t.seed_index): t for t in collect_telemetry(model, 0)}
    assert tel[(slot, 0)].interface is not None and tel[(slot, 0)].interface.layout == layout
    assert tel[(slot, 0)].chunk_variance > 0
    d = Driver(model, x, epoch=1)
    d.to_stage(slot, 1, kernel_for(model, lib, slot, 1, family=FAMILY[layout]), S.FOSSILIZED, steps=3)
    assert seed_parameter_count(model) > 0
    assert host_parameter_count(model) == sum(p.numel() for p in bare.parameters())
    model.eval()
    with torch.no_grad():
        grown = model(x)
    assert grown.shape == expected.shape and not torch.equal(grown, expected)
    unwrap(model)
    assert not any(isinstance(m, KasminaLayer) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model(x), grown)


def test_telemetry_fields_are_valid_and_per_chunk() -> None:
    model = wrap(mlp(), KasminaConfig(chunks_per_layer=4, telemetry_every=1, include_head=True))
    x = torch.randn(32, 8)
    for _ in range(3):
        model(x).pow(2).mean().backward()
    tel = collect_telemetry(model, 0)
    assert len(tel) == 4 + 4 and {t.layer_id for t in tel} == {"0", "2"}
    first = [t for t in tel if t.layer_id == "0"]
    assert [t.interface for t in first] == [TensorInterface(layout="BD", features=4)] * 4
    for t in tel:
        assert t.stage is S.DORMANT and t.epoch == 0 and t.epochs_in_stage == 1
        assert t.gradient_norm > 0 and t.chunk_variance > 0
        assert 0 <= t.dead_node_ratio <= 1 and 0 <= t.activation_sparsity <= 1 and -1 <= t.avg_correlation <= 1


def test_modules_without_a_known_width_are_refused() -> None:
    with pytest.raises(ValueError, match="cannot tell the output features"):
        wrap(nn.Sequential(nn.ReLU()), KasminaConfig(target_types=["ReLU"]))


def test_dead_units_show_in_telemetry() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    with torch.no_grad():
        model[0].bias[:4] = -100.0  # units 0..3 of the first layer never fire
    wrap(model, KasminaConfig(chunks_per_layer=2, target_modules=["0"]))
    model(torch.randn(64, 4))
    dead, alive = collect_telemetry(model, 0)
    assert dead.dead_node_ratio == 1.0 and alive.dead_node_ratio < 0.5
    assert dead.activation_sparsity < 0.5  # pre-activations are large negative, not zero


def test_targeting_rules() -> None:
    model = wrap(SmallTransformer(), KasminaConfig())  # Linear, but not inside the encoder layers nor the head
    assert set(kasmina_layers(model)) == {"embed"}
    assert set(kasmina_layers(wrap(SmallTransformer(), KasminaConfig(include_head=True)))) == {"embed", "head"}
    model = wrap(mlp(), KasminaConfig(target_modules=["[02]"], exclude_modules=["2"]))
    assert set(kasmina_layers(model)) == {"0"}
    with pytest.warns(UserWarning, match="fused kernels"):
        wrap(SmallTransformer(), KasminaConfig(target_modules=["encoder.layers.0.linear1", "head"]))
    with pytest.raises(ValueError, match="already has Kasmina layers"):
        wrap(model, KasminaConfig())
    with pytest.raises(ValueError, match="no module matched"):
        wrap(mlp(), KasminaConfig(target_types=["Conv2d"]))
    with pytest.raises(ValueError, match="fewer than chunks_per_layer"):
        wrap(mlp(), KasminaConfig(chunks_per_layer=5, include_head=True))


def test_seeds_follow_the_host_dtype() -> None:
    lib = LocalKernelLibrary()
    model = wrap(mlp().double(), fast_config(), lib)
    x = torch.randn(4, 8, dtype=torch.float64)
    d = Driver(model, x)
    d.to_stage("0", 0, kernel_for(model, lib, "0"), S.GRAFTING, steps=2)
    assert all(p.dtype == torch.float64 for p in kasmina_layers(model)["0"].seeds.parameters())
    assert model(x).dtype == torch.float64


def test_linear_layout_is_learned_from_its_first_output() -> None:
    model = wrap(nn.Sequential(nn.Linear(6, 8)), KasminaConfig(include_head=True))
    model(torch.randn(2, 5, 6))
    assert collect_telemetry(model, 0)[0].interface == TensorInterface(layout="BTD", features=8)


def test_a_kernel_chosen_from_another_library_instance_loads() -> None:
    # Tamiyo and Kasmina may hold different LocalKernelLibrary instances: ids are content-derived, and the
    # layer registers its chunk interface (here BTD, learned at the first forward) before loading.
    model = wrap(nn.Sequential(nn.Linear(6, 8)), fast_config(include_head=True), LocalKernelLibrary())
    x = torch.randn(2, 5, 6)
    model(x)
    tamiyo_library = LocalKernelLibrary()
    d = Driver(model, x)
    d.to_stage("0", 0, kernel_for(model, tamiyo_library, "0", 0, family="attention_head"), S.GRAFTING, steps=2)
    assert model(x).shape == (2, 5, 8)
