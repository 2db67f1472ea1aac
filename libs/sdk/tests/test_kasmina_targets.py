"""Seed slots on what researchers target: recurrent layers, attention used directly, embeddings, Conv1d, Sequential
blocks, a ResNet-style CNN with BatchNorm, tied weights, a TransformerEncoder's fast path; the output head left alone.

Every architecture goes through the same round trip: DORMANT is a bit-exact identity, a seed grows to FOSSILIZED,
the state dict loads into a fresh wrapped copy with the same outputs, and unwrap keeps them.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import pytest
import torch
from torch import nn

from esper.kasmina import KasminaConfig, KasminaLayer, kasmina_layers, unwrap, wrap
from esper.kasmina.targets import output_head
from esper.kasmina.testing import Driver, fast_config, kernel_for
from esper_contracts import SeedStage
from esper_kernels import LocalKernelLibrary

S = SeedStage
FAMILY = {"BD": "bottleneck", "BCHW": "depthwise_conv", "BTD": "attention_head"}


class ResNetish(nn.Module):
    """Two residual Conv-BatchNorm blocks and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                          nn.BatchNorm2d(8)) for _ in range(2))
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for block in self.blocks:
            h = torch.relu(h + block(h))
        return self.head(h.mean((2, 3)))


class GRUClassifier(nn.Module):
    """Token embedding, a GRU (batch-first or not, one or two directions), a head on the last step."""

    def __init__(self, bidirectional: bool = False, batch_first: bool = True, cell: type[nn.RNNBase] = nn.GRU) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.embed = nn.Embedding(20, 8)
        self.rnn = cell(8, 6, batch_first=batch_first, bidirectional=bidirectional)
        self.head = nn.Linear(12 if bidirectional else 6, 3)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        out, _ = self.rnn(h if self.batch_first else h.transpose(0, 1))
        out = out if self.batch_first else out.transpose(0, 1)
        return self.head(out[:, -1])


class DirectAttention(nn.Module):
    """nn.MultiheadAttention called directly, its (output, weights) tuple unpacked by the model."""

    def __init__(self, batch_first: bool = True) -> None:
        super().__init__()
        self.batch_first = batch_first
        self.proj = nn.Linear(6, 16)
        self.attn = nn.MultiheadAttention(16, 4, batch_first=batch_first)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x)
        h = h if self.batch_first else h.transpose(0, 1)
        out, _weights = self.attn(h, h, h)
        return self.head(out if self.batch_first else out.transpose(0, 1))


class Conv1dNet(nn.Module):
    """A 1-D convolution over (batch, channels, time), pooled into a head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 8, 3, padding=1)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(-1))


class TiedBlocks(nn.Module):
    """Blocks in a ModuleDict, two of them sharing one weight."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict({"inp": nn.Linear(8, 16), "a": nn.Linear(16, 16), "b": nn.Linear(16, 16)})
        self.blocks["b"].weight = self.blocks["a"].weight
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.blocks["inp"](x))
        h = torch.relu(self.blocks["a"](h))
        return self.head(torch.tanh(self.blocks["b"](h)))


class SequentialBlocks(nn.Module):
    """Sequential blocks targeted as a whole (the slot sits on the block's last Linear features)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh())
                                  for _ in range(2))
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.body:
            x = block(x)
        return self.head(x)


class Encoder(nn.Module):
    """A batch-first TransformerEncoder with its nested-tensor fast path on, and an optional padding mask."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor, padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(self.embed(x), src_key_padding_mask=padding_mask)


Case = tuple[Callable[[], nn.Module], KasminaConfig, Callable[[], torch.Tensor], str, str]
CASES: dict[str, Case] = {
    "resnet_batchnorm": (ResNetish, KasminaConfig(target_types=["Conv2d"]), lambda: torch.randn(4, 3, 6, 6),
                         "blocks.1.3", "BCHW"),
    "gru": (GRUClassifier, KasminaConfig(target_types=["GRU"]), lambda: torch.randint(0, 20, (3, 5)), "rnn", "BTD"),
    "bidirectional_seq_first_gru": (lambda: GRUClassifier(bidirectional=True, batch_first=False),
                                    KasminaConfig(target_types=["GRU"]), lambda: torch.randint(0, 20, (3, 5)),
                                    "rnn", "BTD"),
    "lstm": (lambda: GRUClassifier(cell=nn.LSTM), KasminaConfig(target_types=["LSTM"]),
             lambda: torch.randint(0, 20, (3, 5)), "rnn", "BTD"),
    "embedding": (GRUClassifier, KasminaConfig(target_types=["Embedding"]), lambda: torch.randint(0, 20, (3, 5)),
                  "embed", "BTD"),
    "attention": (DirectAttention, KasminaConfig(target_types=["MultiheadAttention"]), lambda: torch.randn(2, 5, 6),
                  "attn", "BTD"),
    "seq_first_attention": (lambda: DirectAttention(batch_first=False),
                            KasminaConfig(target_types=["MultiheadAttention"]), lambda: torch.randn(2, 5, 6), "attn",
                            "BTD"),
    "conv1d": (Conv1dNet, KasminaConfig(target_types=["Conv1d"]), lambda: torch.randn(3, 4, 7), "conv", "BTD"),
    "tied_moduledict": (TiedBlocks, KasminaConfig(), lambda: torch.randn(6, 8), "blocks.b", "BD"),
    "sequential_block": (SequentialBlocks, KasminaConfig(target_types=["Sequential"]), lambda: torch.randn(6, 8),
                         "body.1", "BD"),
    "transformer_encoder": (Encoder, KasminaConfig(target_types=["TransformerEncoderLayer"]),
                            lambda: torch.randn(2, 5, 6), "encoder.layers.1", "BTD"),
}


def _made(make: Callable[[], nn.Module], seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return make()


def _eval(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("case", list(CASES))
def test_dormant_identity_then_grow_save_load_unwrap(case: str) -> None:
    make, config, make_x, slot, layout = CASES[case]
    torch.manual_seed(1)
    x = make_x()
    bare = _made(make, 0)
    expected = _eval(bare, x)
    lib = LocalKernelLibrary()
    options = fast_config(chunks_per_layer=2).model_dump(exclude={"target_types", "target_modules"})
    config = config.model_copy(update=options)
    model = wrap(copy.deepcopy(bare).train(), config, lib)
    assert slot in kasmina_layers(model)
    assert torch.equal(_eval(model, x), expected)  # every seed DORMANT: exact identity
    model.train()
    Driver(model, x).to_stage(slot, 1, kernel_for(model, lib, slot, 1, family=FAMILY[layout]), S.FOSSILIZED, steps=3)
    assert kasmina_layers(model)[slot].chunks.interface(1).layout == layout
    grown = _eval(model, x)
    assert grown.shape == expected.shape and not torch.equal(grown, expected)

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    fresh = wrap(_made(make, 7), config, lib)  # other initial weights: everything must come from the file
    fresh.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=False))
    assert kasmina_layers(fresh)[slot].stage(1) is S.FOSSILIZED
    assert torch.equal(_eval(fresh, x), grown)

    unwrap(model)
    assert not any(isinstance(m, KasminaLayer) for m in model.modules())
    assert torch.equal(_eval(model, x), grown)


def test_tied_weights_stay_tied_through_wrap_load_and_unwrap() -> None:
    model = wrap(TiedBlocks(), KasminaConfig())
    blocks = model.blocks
    assert blocks["a"].host.weight is blocks["b"].host.weight
    fresh = wrap(TiedBlocks(), KasminaConfig())
    fresh.load_state_dict(model.state_dict())
    assert fresh.blocks["a"].host.weight is fresh.blocks["b"].host.weight
    unwrap(model)
    assert model.blocks["a"].weight is model.blocks["b"].weight


def test_transformer_encoder_fast_path_is_kept_and_dormant_is_exact_with_a_padding_mask() -> None:
    torch.manual_seed(0)
    bare = Encoder().eval()
    x = torch.randn(3, 6, 6)
    mask = torch.zeros(3, 6, dtype=torch.bool)
    mask[0, 4:] = True
    mask[2, 2:] = True
    with torch.no_grad():
        expected = bare(x, mask)
    assert torch.equal(expected[0, 4:], torch.zeros_like(expected[0, 4:]))  # the nested-tensor fast path ran
    lib = LocalKernelLibrary()
    model = wrap(copy.deepcopy(bare), fast_config(target_types=["TransformerEncoderLayer"], chunks_per_layer=2), lib)
    assert model.encoder.use_nested_tensor is True  # wrap leaves the model's own fast path alone
    with torch.no_grad():
        assert torch.equal(model(x, mask), expected)  # padded and unpadded positions, bit for bit
    model.train()
    Driver(model, x).to_stage("encoder.layers.1", 0, kernel_for(model, lib, "encoder.layers.1", 0,
                                                                 family="attention_head"), S.FOSSILIZED, steps=3)
    model.eval()
    with torch.no_grad():
        grown = model(x, mask)  # the seed runs on the fast path's nested output
    assert not torch.equal(grown, expected)
    assert torch.equal(grown[0, 4:], torch.zeros_like(grown[0, 4:]))  # padded positions stay absent
    unwrap(model)
    assert model.encoder.use_nested_tensor is True
    with torch.no_grad():
        assert torch.equal(model(x, mask), grown)


def test_the_output_head_is_left_alone_unless_asked() -> None:
    model = GRUClassifier()
    assert output_head(model) == "head"
    with pytest.raises(ValueError, match="output head 'head' is skipped unless include_head=True"):
        wrap(model, KasminaConfig())
    assert set(kasmina_layers(wrap(model, KasminaConfig(include_head=True)))) == {"head"}
    assert set(kasmina_layers(wrap(TiedBlocks(), KasminaConfig()))) == {"blocks.inp", "blocks.a", "blocks.b"}
    assert set(kasmina_layers(wrap(ResNetish(), KasminaConfig(target_types=["Sequential"])))) == {
        "stem", "blocks.0", "blocks.1"}
    # a target_modules pattern naming the head is what was asked for
    assert set(kasmina_layers(wrap(TiedBlocks(), KasminaConfig(target_modules=["head"])))) == {"head"}
