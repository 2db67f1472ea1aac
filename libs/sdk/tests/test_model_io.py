"""esper.load_model: a saved model back without rewriting the wrapping code, wrapped or unwrapped; a state dict for
another chunks_per_layer names the layer and the option."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

import esper
from esper.kasmina import KasminaLayer, kasmina_layers, unwrap, wrap
from esper.kasmina.testing import Driver, fast_config, kernel_for
from esper_contracts import SeedStage
from esper_kernels import LocalKernelLibrary


class Net(nn.Module):
    """A plain user class, importable and buildable without arguments."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _grown() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    lib = LocalKernelLibrary()
    model = wrap(Net(), fast_config(chunks_per_layer=2), lib)
    x = torch.randn(12, 8)
    Driver(model, x).to_stage("body.2", 1, kernel_for(model, lib, "body.2", 1, family="bottleneck"),
                              SeedStage.FOSSILIZED)
    return model, x


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def test_a_wrapped_model_comes_back_wrapped_with_its_seeds(tmp_path: Path) -> None:
    model, x = _grown()
    expected = _out(model, x)
    esper.save_model(model, tmp_path / "m")
    loaded = esper.load_model(tmp_path / "m")  # the class is imported and built; the wrap is replayed
    assert type(loaded) is Net and set(kasmina_layers(loaded)) == {"body.0", "body.2"}
    assert kasmina_layers(loaded)["body.2"].stage(1) is SeedStage.FOSSILIZED
    assert torch.equal(_out(loaded, x), expected)
    torch.manual_seed(5)
    assert torch.equal(_out(esper.load_model(tmp_path / "m", model=Net()), x), expected)


def test_an_unwrapped_model_loads_back_and_plain_weights_load_into_the_plain_class(tmp_path: Path) -> None:
    model, x = _grown()
    unwrap(model)
    expected = _out(model, x)
    esper.save_model(model, tmp_path / "grafted")
    loaded = esper.load_model(tmp_path / "grafted")
    assert not any(isinstance(m, KasminaLayer) for m in loaded.modules())
    assert torch.equal(_out(loaded, x), expected)

    torch.manual_seed(0)
    plain = wrap(Net(), fast_config())
    unwrap(plain)  # no seed ever grew: the user's own modules again
    esper.save_model(plain, tmp_path / "plain")
    mine = Net()
    mine.load_state_dict(torch.load(tmp_path / "plain" / "model.pt"))
    assert torch.equal(_out(mine, x), _out(plain, x))
    assert torch.equal(_out(esper.load_model(tmp_path / "plain"), x), _out(plain, x))


def test_a_class_that_needs_arguments_asks_for_an_instance(tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    esper.save_model(wrap(model, fast_config()), tmp_path / "seq")
    with pytest.raises(TypeError, match=re.escape("pass a fresh instance: load_model(path, model=MyModel(...))")):
        esper.load_model(tmp_path / "seq")  # nn.Sequential() builds empty: nothing fits
    torch.manual_seed(3)
    again = esper.load_model(tmp_path / "seq", model=nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    assert torch.equal(again[0].host.weight, model[0].host.weight)


def test_a_state_dict_for_another_chunks_per_layer_names_the_layer_and_the_option() -> None:
    model, _ = _grown()
    other = wrap(Net(), fast_config(chunks_per_layer=4))
    with pytest.raises(ValueError, match=r"'body\.0'.*different chunks_per_layer \(4 here\)"):
        other.load_state_dict(model.state_dict())
