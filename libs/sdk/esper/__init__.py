"""The researcher SDK: wrap a model, Kasmina seed slots, the Tolaria trainer.

A whole run in six lines (the design's researcher journey)::

    import esper
    config = esper.load_config("recipes/configs/demo-spirals.yaml")
    model = esper.wrap(MyModel(), config.kasmina)
    controller = esper.TamiyoController(model, config.tamiyo)
    final_model, history = esper.TolariaTrainer(model=model, controller=controller, config=config.tolaria,
                                                train_data=train, val_data=val).train()
    esper.save_model(final_model, "runs/my-run/model")

``train_data``/``val_data`` are any re-iterables of ``(inputs, labels)`` batches: a DataLoader, a list of
``(x, y)`` tensor pairs, or :class:`esper.Batches` over a :class:`esper.Split` (``esper.train_val_test_split``
makes three from arrays); without them the trainer trains on ``config.tolaria.task``.
``esper train CONFIG`` runs the same from the command line, standalone or on the distributed platform.
"""

from esper_contracts import KernelSelector
from esper_kernels import LocalKernelLibrary
from esper_policy import ControlPolicy, HeuristicPolicy, NullPolicy, RandomGerminationPolicy, TamiyoConfig
from esper_policy import build_policy as _build_policy

from .config import ConfigError, EsperConfig, PlatformConfig, TolariaConfig, load_config, parse_config
from .controller import TamiyoController
from .data import Batches, Split, train_val_test_split
from .kasmina import KasminaConfig, unwrap, wrap
from .lineage import Lineage, lineage_of, save_model
from .model_io import load_model
from .tasks import TaskData, TaskSpec, load_task, load_task_spec
from .tolaria import CheckpointIntegrityError, TolariaTrainer, TrainingDivergedError, TrainingHistory


def build_controller(config: TamiyoConfig | None = None, kernels: KernelSelector | None = None) -> ControlPolicy:
    """The control policy ``config.policy`` names, choosing kernels from ``kernels`` (default: built-ins).

    Pass the same library to :func:`wrap` so that Kasmina can load what Tamiyo selects.
    """
    return _build_policy(config, kernels if kernels is not None else LocalKernelLibrary())


__all__ = [
    "Batches",
    "CheckpointIntegrityError",
    "ConfigError",
    "ControlPolicy",
    "EsperConfig",
    "HeuristicPolicy",
    "KasminaConfig",
    "Lineage",
    "LocalKernelLibrary",
    "NullPolicy",
    "PlatformConfig",
    "RandomGerminationPolicy",
    "Split",
    "TamiyoConfig",
    "TamiyoController",
    "TaskData",
    "TaskSpec",
    "TolariaConfig",
    "TolariaTrainer",
    "TrainingDivergedError",
    "TrainingHistory",
    "build_controller",
    "lineage_of",
    "load_config",
    "load_model",
    "load_task",
    "load_task_spec",
    "parse_config",
    "save_model",
    "train_val_test_split",
    "unwrap",
    "wrap",
]
