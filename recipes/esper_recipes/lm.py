"""``python -m esper_recipes.lm``: a character-level GPT grown under hierarchical control (Tamiyo-Prime).

A tiny GPT (:mod:`esper_recipes.chargpt`) learns a generated English-like corpus (:mod:`esper_recipes.text`;
nothing is downloaded). It is trained twice, with the same seed, data order and epochs:

* **host alone** — the model as built, no controller;
* **grown** — Kasmina seed slots on every block's ``attn.c_proj`` and ``mlp.c_proj``, and the control plane
  of the distributed platform, in this process on a memory bus: the Tamiyo service (its heuristic policy, the
  budget economy and Tamiyo-Prime, reading ``recipes/configs/domains-lm.yaml``) and Narset's workers as the
  trainer's controller. Prime shares each epoch's adaptation budget (ATP) between the model's domains —
  embeddings, early blocks, mid blocks, head — by their priors and their health; a germination goes ahead
  only when its region's worker can pay for it, otherwise the worker files a proposal.

Both are scored on the validation and test stretches of the corpus in loss (nats per character) and bits per
character. Everything the grown run leaves goes to ``runs/demo-lm/``: model and ``lineage.json``, metrics
and events, ``summary.json`` and a report (``report.png``, ``report.html``; its accuracy is next-character
accuracy). Settings: ``recipes/configs/demo-lm.yaml`` (its ``lm`` section is the model and corpus).
"""

from __future__ import annotations

import argparse
import json
import math
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from pydantic import BaseModel, ConfigDict, Field
from rich.console import Console
from rich.table import Table
from torch import nn

from esper.config import ConfigError, EsperConfig, parse_config
from esper.kasmina import wrap
from esper.lineage import Lineage, save_model
from esper.tolaria import TolariaTrainer, TrainingHistory, evaluate, progress_bar_wanted
from esper_kernels import LocalKernelLibrary
from esper_narset_worker import AllocatorConfig, HostConfig, NarsetHost
from esper_oona import connect
from esper_policy import TamiyoConfig
from esper_tamiyo.service import TamiyoService
from esper_tamiyo.service import create_service as create_tamiyo

from .chargpt import CharGPT, GPTShape
from .text import NextCharBatches, TextTask, lm_task

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = CONFIGS / "demo-lm.yaml"
DOMAINS_FILE = CONFIGS / "domains-lm.yaml"

#: Kernel tags a causal language model must never be grown with. The built-in attention-head blueprint
#: (tag ``token_mixing``) is ``x + MultiheadAttention(norm(x))`` over every position with no causal mask:
#: in a seed slot it would let position t read the characters after t, leaking the very targets the model is
#: scored on (validation loss would fall for the wrong reason). Kernels acting on each position separately
#: (residual MLP, bottleneck, low-rank adapter) keep the model causal; ``test_lm.py`` checks both facts.
CAUSAL_KERNEL_EXCLUSIONS = ("token_mixing",)


class LMSettings(BaseModel):
    """The ``lm`` section of the demo's YAML: the corpus and the model's shape."""

    model_config = ConfigDict(extra="forbid")

    corpus_chars: int = Field(default=120_000, ge=1_000, description="Characters of generated text")
    corpus_seed: int = Field(default=0, description="Seed of the text generator")
    block_size: int = Field(default=32, ge=2, description="Context length in characters")
    n_layer: int = Field(default=4, ge=1)
    n_head: int = Field(default=4, ge=1)
    d_model: int = Field(default=32, ge=4)
    mlp_ratio: int = Field(default=2, ge=1)
    eval_batch_size: int = Field(default=256, ge=1)
    narset: NarsetSettings = Field(default_factory=lambda: NarsetSettings())


class NarsetSettings(BaseModel):
    """The ``narset`` section: when Narset's allocator lets growth start in a region (see its docstring)."""

    model_config = ConfigDict(extra="forbid")

    enter_repair: float = Field(default=0.6, gt=0.0, le=1.0, description="Repair need that turns on repair mode")
    exit_repair: float = Field(default=0.3, ge=0.0, lt=1.0, description="Repair need that turns it off again")


def load_lm_config(path: Path = DEMO_CONFIG) -> tuple[LMSettings, EsperConfig]:
    """The demo's settings: its ``lm`` section (with ``narset`` inside as ``settings.narset``), and the run
    config (tolaria, kasmina, tamiyo) around it.

    Kernels tagged :data:`CAUSAL_KERNEL_EXCLUSIONS` are always excluded, whatever the file says.
    """
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the demo config: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    settings = LMSettings.model_validate({**(data.pop("lm", None) or {}), "narset": data.pop("narset", None) or {}})
    config = parse_config(data, str(path))
    excluded = sorted(set(config.tamiyo.kernel_tags_excluded) | set(CAUSAL_KERNEL_EXCLUSIONS))
    tamiyo = config.tamiyo.model_copy(update={"kernel_tags_excluded": excluded})
    return settings, config.model_copy(update={"tamiyo": tamiyo})


def build_host(task: TextTask, settings: LMSettings) -> CharGPT:
    """A freshly initialised CharGPT for ``task`` (seed torch first for a reproducible init)."""
    return CharGPT(GPTShape(vocab_size=len(task.vocab), block_size=task.block_size, n_layer=settings.n_layer,
                            n_head=settings.n_head, d_model=settings.d_model, mlp_ratio=settings.mlp_ratio))


def bits_per_char(loss_nats: float) -> float:
    """A mean cross-entropy in nats per character, in bits per character."""
    return loss_nats / math.log(2)


@dataclass
class LMResult:
    """One trained model and its scores (losses in nats per character)."""

    name: str
    val_loss: float
    test_loss: float
    test_accuracy: float  # next-character accuracy
    parameters: int
    seconds: float
    history: TrainingHistory
    lineage: Lineage
    model: nn.Module
    outcomes: dict[str, int] = field(default_factory=dict)
    domains: dict[str, dict[str, float]] = field(default_factory=dict)  # per domain: regions, ATP, spent
    control: dict[str, float] = field(default_factory=dict)  # what Tamiyo asked for and Narset paid

    @property
    def val_bpc(self) -> float:
        """Validation bits per character."""
        return bits_per_char(self.val_loss)

    @property
    def test_bpc(self) -> float:
        """Test bits per character."""
        return bits_per_char(self.test_loss)


@contextmanager
def hierarchical_control(model: nn.Module, config: EsperConfig, domains_file: Path, kernels: LocalKernelLibrary,
                         run_id: str, narset: NarsetSettings | None = None,
                         ) -> Iterator[tuple[NarsetHost, TamiyoService]]:
    """Tamiyo (policy, economy, Tamiyo-Prime) and Narset's workers for ``model``, on a private memory bus.

    The same services the platform runs, minus the transport: Tamiyo's bus handlers start as they do under
    ``esper serve tamiyo`` (no HTTP port is opened), and Narset runs one in-process worker (no coordinator).
    """
    bus_url = f"memory://demo-lm-{uuid.uuid4().hex[:8]}"
    tamiyo = create_tamiyo(bus_url=bus_url, domains_file=str(domains_file), kernels=kernels,
                           policy=config.tamiyo.model_dump(mode="json"))
    tamiyo.on_start()
    bus = connect(bus_url, producer_name=f"trainer-{run_id}")
    host: NarsetHost | None = None
    try:
        narset = narset or NarsetSettings()
        allocator = AllocatorConfig(enter_repair=narset.enter_repair, exit_repair=narset.exit_repair)
        host = NarsetHost(model, bus, config=HostConfig(decision_timeout_s=60.0, heartbeat_interval_s=None),
                          allocator_config=allocator)
        yield host, tamiyo
    finally:
        if host is not None:
            host.close()
        bus.close()
        tamiyo.on_stop()
        tamiyo.bus.close()


def domain_books(tamiyo: TamiyoService, host: NarsetHost) -> dict[str, dict[str, float]]:
    """Per domain over the run: regions, ATP Prime allocated (summed over cycles), ATP spent, mean criticality."""
    controller = tamiyo.controller
    books: dict[str, dict[str, float]] = {
        d: {"regions": 0, "allocated": 0.0, "spent": 0.0, "criticality": 0.0} for d in controller.domains.domains}
    for region in controller.regions.values():
        books.setdefault(region.domain_id, {"regions": 0, "allocated": 0.0, "spent": 0.0, "criticality": 0.0})
        books[region.domain_id]["regions"] += 1
    cycles = controller.recent_decisions(limit=controller.options.history, kind="allocation")
    for record in cycles:
        for domain, part in record["outputs"]["domains"].items():
            books[domain]["allocated"] += part["budget"]
            books[domain]["criticality"] += part["criticality"] / len(cycles)
    for region_id, cycles in host.ledger.state_dict()["spent"].items():  # region -> cycle -> ATP spent
        books[controller.domains.domain_of(region_id)]["spent"] += sum(cycles.values())
    return books


def control_books(tamiyo: TamiyoService, host: NarsetHost, lineage: Lineage) -> dict[str, float]:
    """Germinations Tamiyo decided vs those Narset paid for (the rest waited for budget or intensity, then
    were dropped), ATP spent, and how Tamiyo answered the proposals Narset filed for a shortfall."""
    tally = tamiyo.controller.tally
    return {"germinations_decided": tally.commands["GERMINATE"], "germinations_paid": len(lineage.germinations),
            "atp_spent": host.spent_total, "proposals_funded": tally.proposals["funded"],
            "proposals_declined": tally.proposals["unfunded"] + tally.proposals["refused"]}


def train_lm(task: TextTask, settings: LMSettings, config: EsperConfig, *, grow: bool, run_dir: Path,
             run_id: str, domains_file: Path = DOMAINS_FILE, quiet: bool = False) -> LMResult:
    """Train the host alone (``grow=False``) or under hierarchical control (``grow=True``) and score it."""
    seed = config.tolaria.seed
    torch.manual_seed(seed)
    model: nn.Module = build_host(task, settings)
    tolaria = config.tolaria.model_copy(update={
        "run_dir": str(run_dir), "run_id": run_id, **({"progress_bar": False, "log_lines": False} if quiet else {}),
    })
    train = NextCharBatches(task.train, tolaria.batch_size, seed=seed)
    val = NextCharBatches(task.val, settings.eval_batch_size, shuffle=False)
    start = time.perf_counter()
    domains: dict[str, dict[str, float]] = {}
    control: dict[str, float] = {}
    if grow:
        library = LocalKernelLibrary(cache_mb=config.kasmina.kernel_cache_mb)
        model = wrap(model, config.kasmina, library)
        with hierarchical_control(model, config, domains_file, library, run_id, settings.narset) as (host, tamiyo):
            trainer = TolariaTrainer(model, host, tolaria, train_data=train, val_data=val)
            model, history = trainer.train()
            domains = domain_books(tamiyo, host)
            control = control_books(tamiyo, host, trainer.lineage)
    else:
        from esper_policy import build_policy

        trainer = TolariaTrainer(model, build_policy(TamiyoConfig(policy="none")), tolaria,
                                 train_data=train, val_data=val)
        model, history = trainer.train()
    seconds = time.perf_counter() - start
    val_loss, _ = evaluate(model, val)
    test_loss, test_acc = evaluate(model, NextCharBatches(task.test, settings.eval_batch_size, shuffle=False))
    return LMResult(name="grown" if grow else "host alone", val_loss=val_loss, test_loss=test_loss,
                    test_accuracy=test_acc, parameters=int(history.epochs[-1]["total_params"]), seconds=seconds,
                    history=history, lineage=trainer.lineage, model=model, outcomes=trainer.lineage.summary(),
                    domains=domains, control=control)


def sample_text(model: nn.Module, task: TextTask, prompt: str, chars: int, seed: int = 0) -> str:
    """``chars`` characters the model writes after ``prompt`` (sampled, seeded)."""
    if not isinstance(model, CharGPT):  # wrap() keeps the model's class: a grown model is still a CharGPT
        raise TypeError(f"sampling needs a CharGPT, not {type(model).__name__}")
    out = model.generate(task.vocab.encode(prompt)[None], chars, generator=torch.Generator().manual_seed(seed))
    return task.vocab.decode(out[0])


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(prog="python -m esper_recipes.lm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=DEMO_CONFIG, help="the demo's YAML (lm, tolaria, kasmina, "
                        "tamiyo sections)")
    parser.add_argument("--domains", type=Path, default=DOMAINS_FILE, help="the hierarchical control YAML")
    parser.add_argument("--epochs", type=int, default=None, help="override tolaria.epochs")
    parser.add_argument("--out", type=Path, default=Path("runs"), help="parent directory of runs/demo-lm/")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # a tiny model: threads cost more than they give
    console = Console(highlight=False, width=None if progress_bar_wanted() else 120)
    settings, config = load_lm_config(args.config)
    if args.epochs is not None:
        config = config.model_copy(update={"tolaria": config.tolaria.model_copy(update={"epochs": args.epochs})})
    task = lm_task(settings.corpus_chars, settings.block_size, settings.corpus_seed)
    out = args.out / "demo-lm"
    shape = f"{settings.n_layer} blocks, d_model {settings.d_model}, {settings.n_head} heads, context " \
            f"{settings.block_size}"
    console.rule(f"[bold]lm: character-level GPT ({shape}) on {settings.corpus_chars:,} generated characters")
    grown = train_lm(task, settings, config, grow=True, run_dir=args.out, run_id="demo-lm",
                     domains_file=args.domains)
    console.print("[dim]lm: the same model alone, same seed and epochs, for comparison[/dim]")
    host = train_lm(task, settings, config, grow=False, run_dir=out / "baseline", run_id="host-only", quiet=True)

    table = Table(title="Esper demo-lm: the GPT alone vs grown under Tamiyo-Prime (bits per character: lower is "
                        "better)")
    for column in ("model", "val loss", "val bpc", "test bpc", "params", "seconds"):
        table.add_column(column)
    for r in (host, grown):
        table.add_row(r.name, f"{r.val_loss:.4f}", f"{r.val_bpc:.4f}", f"{r.test_bpc:.4f}", f"{r.parameters:,}",
                      f"{r.seconds:.0f}")
    console.print(table)
    prime = Table(title="Tamiyo-Prime's domains over the grown run (ATP summed over epochs)")
    for column in ("domain", "regions", "ATP allocated", "ATP spent", "mean criticality"):
        prime.add_column(column)
    for name, book in grown.domains.items():
        prime.add_row(name, str(int(book["regions"])), f"{book['allocated']:.1f}", f"{book['spent']:.1f}",
                      f"{book['criticality']:.3f}")
    console.print(prime)
    outcomes = ", ".join(f"{k.lower()} {v}" for k, v in sorted(grown.outcomes.items())) or "none"
    c = grown.control
    console.print(f"Tamiyo decided {c['germinations_decided']} germinations; Narset paid for "
                  f"{c['germinations_paid']} ({c['atp_spent']:.1f} ATP) and let the rest wait for budget or "
                  f"growth intensity; proposals funded {c['proposals_funded']}, declined {c['proposals_declined']}")
    console.print(f"adaptations: {outcomes}")

    summary: dict[str, Any] = {
        "task": "lm", "corpus_chars": settings.corpus_chars, "vocab": len(task.vocab),
        "host_val_loss": host.val_loss, "esper_val_loss": grown.val_loss,
        "host_val_bpc": host.val_bpc, "esper_val_bpc": grown.val_bpc,
        "host_test_bpc": host.test_bpc, "esper_test_bpc": grown.test_bpc,
        "host_test_accuracy": host.test_accuracy, "esper_test_accuracy": grown.test_accuracy,
        "host_parameters": host.parameters, "esper_parameters": grown.parameters,
        "outcomes": grown.outcomes, "domains": grown.domains, "control": grown.control,
        "seconds": host.seconds + grown.seconds,
    }
    write_outputs(out, task, host, grown, summary)
    console.print(f"sample (grown): {sample_text(grown.model, task, 'The ', 60)!r}")
    console.print(f"report: {out / 'report.html'}  (model.pt, lineage.json, summary.json, report.png beside it)")
    console.print(f"host alone: val_loss {host.val_loss:.4f}  val_bpc {host.val_bpc:.4f}  "
                  f"test_bpc {host.test_bpc:.4f}  params {host.parameters}")
    console.print(f"grown:      val_loss {grown.val_loss:.4f}  val_bpc {grown.val_bpc:.4f}  "
                  f"test_bpc {grown.test_bpc:.4f}  params {grown.parameters}")
    return 0 if all(math.isfinite(r.val_loss) for r in (host, grown)) else 1


def write_outputs(out: Path, task: TextTask, host: LMResult, grown: LMResult, summary: dict[str, Any]) -> None:
    """Model + lineage, ``summary.json`` and the report (accuracy there is next-character accuracy)."""
    from esper.report import write_report

    save_model(grown.model, out, extra={"task": "lm", "vocab": task.vocab.chars, "summary": summary})
    (out / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_report(out, task="lm (next-character accuracy)", history=grown.history,
                 baseline=host.history, summary=summary, lineage=grown.lineage)


if __name__ == "__main__":
    raise SystemExit(main())
