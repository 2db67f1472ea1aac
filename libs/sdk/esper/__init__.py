"""The researcher SDK: wrap a model, Kasmina seed slots, the Tolaria trainer.

A whole run in six lines::

    import esper
    config = esper.load_config("recipes/configs/demo-digits.yaml")
    model = esper.wrap(MyModel(), config.kasmina)
    controller = esper.build_controller(config.tamiyo)
    final_model, history = esper.TolariaTrainer(model, controller, config.tolaria,
                                                train_data=train, val_data=val).train()
    esper.save_model(final_model, "runs/my-run/model")
"""

from esper_contracts import KernelSelector
from esper_kernels import LocalKernelLibrary
from esper_policy import ControlPolicy, HeuristicPolicy, NullPolicy, RandomGerminationPolicy, TamiyoConfig
from esper_policy import build_policy as _build_policy

from .config import ConfigError, EsperConfig, TolariaConfig, load_config, parse_config
from .kasmina import KasminaConfig, unwrap, wrap
from .lineage import Lineage, lineage_of, save_model
from .tolaria import CheckpointIntegrityError, TolariaTrainer, TrainingHistory


def build_controller(config: TamiyoConfig | None = None, kernels: KernelSelector | None = None) -> ControlPolicy:
    """The control policy ``config.policy`` names, choosing kernels from ``kernels`` (default: built-ins).

    Pass the same library to :func:`wrap` so that Kasmina can load what Tamiyo selects.
    """
    return _build_policy(config, kernels if kernels is not None else LocalKernelLibrary())


__all__ = [
    "CheckpointIntegrityError", "ConfigError", "ControlPolicy", "EsperConfig", "HeuristicPolicy", "KasminaConfig",
    "Lineage", "LocalKernelLibrary", "NullPolicy", "RandomGerminationPolicy", "TamiyoConfig", "TolariaConfig",
    "TolariaTrainer", "TrainingHistory", "build_controller", "lineage_of", "load_config", "parse_config",
    "save_model", "unwrap", "wrap",
]
