"""wrap refuses bad input by name and is all-or-nothing; unwrap says what it does with live seeds; configs validate
on assignment."""

from __future__ import annotations

import copy

import pytest
import torch
from pydantic import ValidationError
from torch import nn

import esper
from esper.kasmina import KasminaConfig, KasminaLayer, kasmina_layers, unwrap, wrap
from esper.kasmina.testing import Driver, fast_config, kernel_for, mlp, train_steps
from esper_contracts import SeedStage
from esper_kernels import LocalKernelLibrary

S = SeedStage


def _plain(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return list(model.named_modules())


def test_typos_in_target_types_and_target_modules_are_named_with_the_near_match() -> None:
    with pytest.raises(ValueError, match=r"'Lineer' \(did you mean 'Linear'\?\)"):
        wrap(mlp(), KasminaConfig(target_types=["Linear", "Lineer"]))
    with pytest.raises(ValueError, match=r"target_modules.*'0\.weight'.*'lyr'"):
        wrap(mlp(), KasminaConfig(target_modules=["0", "0.weight", "lyr"]))
    with pytest.raises(ValueError, match=r"'blocks\.\*\.mpl' \(did you mean 'blocks\.0\.mlp'\?\)"):
        model = nn.Sequential()
        model.blocks = nn.ModuleList([nn.Module()])
        model.blocks[0].mlp = nn.Linear(4, 4)
        wrap(model, KasminaConfig(target_modules=["blocks.*.mpl"]))
    # a torch.nn class the model happens not to have is not a typo: it just matches nothing here
    assert set(kasmina_layers(wrap(mlp(), KasminaConfig(target_types=["Linear", "Conv2d"])))) == {"0"}


def test_a_model_that_is_not_a_module_and_a_config_that_is_not_kasminas_are_named() -> None:
    with pytest.raises(TypeError, match=r"torch\.nn\.Module.*got str"):
        wrap("resnet18")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"not the whole EsperConfig: pass config\.kasmina"):
        wrap(mlp(), esper.EsperConfig())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"not a dict: pass esper\.KasminaConfig\(\*\*your_dict\)"):
        wrap(mlp(), {"chunks_per_layer": 2})  # type: ignore[arg-type]


def test_configs_validate_on_assignment() -> None:
    tolaria = esper.TolariaConfig()
    with pytest.raises(ValidationError, match="learning_rate"):
        tolaria.learning_rate = -0.1
    assert tolaria.learning_rate == 1e-3
    kasmina = KasminaConfig()
    with pytest.raises(ValidationError, match="chunks_per_layer"):
        kasmina.chunks_per_layer = 0
    config = esper.EsperConfig()
    with pytest.raises(ValidationError):
        config.kasmina = {"chunks_per_layr": 2}  # type: ignore[assignment]


def test_a_failed_wrap_leaves_the_model_untouched_and_a_retry_works() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    before = _plain(model)
    state = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"'2' has 3 features, fewer than chunks_per_layer=4"):
        wrap(model, KasminaConfig(chunks_per_layer=4, include_head=True))  # layer "0" (16 wide) would fit
    assert _plain(model) == before and not any(isinstance(m, KasminaLayer) for m in model.modules())
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert set(kasmina_layers(wrap(model, KasminaConfig(chunks_per_layer=3, include_head=True)))) == {"0", "2"}


def _with_live_seeds() -> tuple[nn.Module, torch.Tensor]:
    lib = LocalKernelLibrary()
    model = wrap(mlp(), fast_config(chunks_per_layer=2, include_head=True), lib)
    x = torch.randn(16, 8)
    d = Driver(model, x)
    d.to_stage("0", 0, kernel_for(model, lib, "0", 0, family="bottleneck"), S.FOSSILIZED)
    d.to_stage("0", 1, kernel_for(model, lib, "0", 1, family="bottleneck"), S.EVALUATING)
    d.to_stage("2", 1, kernel_for(model, lib, "2", 1, family="bottleneck"), S.GRAFTING)
    train_steps(model, x, 2)  # 0 < alpha < 1
    assert 0.0 < kasmina_layers(model)["2"].alpha(1) < 1.0
    return model, x


def _out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(x)


def test_unwrap_refuses_live_seeds_by_default_and_names_them() -> None:
    model, _x = _with_live_seeds()
    with pytest.raises(ValueError, match=r"0\[1\] \(EVALUATING\), 2\[1\] \(GRAFTING\).*live_seeds='keep'"):
        unwrap(model)
    assert set(kasmina_layers(model)) == {"0", "2"}  # nothing changed
    with pytest.raises(ValueError, match="live_seeds must be"):
        unwrap(model, live_seeds="ignore")  # type: ignore[arg-type]


def test_unwrap_keep_keeps_blended_seeds_and_the_outputs() -> None:
    model, x = _with_live_seeds()
    before = _out(model, x)
    unwrap(model, live_seeds="keep")
    assert not any(isinstance(m, KasminaLayer) for m in model.modules())
    assert set(model[0].seeds) == {"0", "1"} and set(model[2].seeds) == {"1"}
    assert torch.equal(_out(model, x), before)


def test_unwrap_drop_warns_naming_the_dropped_seeds() -> None:
    model, x = _with_live_seeds()
    before = _out(model, x)
    with pytest.warns(UserWarning, match=r"drops live seeds: 0\[1\] \(EVALUATING\), 2\[1\] \(GRAFTING\)"):
        unwrap(model, live_seeds="drop")
    assert set(model[0].seeds) == {"0"} and type(model[2]) is nn.Linear
    assert not torch.equal(_out(model, x), before)
