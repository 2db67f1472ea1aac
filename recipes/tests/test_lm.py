"""The language-model demo: the corpus, a causal GPT (with seeds grown in it), and the demo end to end.

The end-to-end test trains a tiny config for a few epochs (seconds): the host alone, then grown under the
Tamiyo service and Narset's workers on a memory bus, with a plateau test that fires at once so a seed is
germinated, paid for from a domain's ATP and trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from esper.kasmina import kasmina_layers, wrap
from esper.kasmina.testing import Driver, fast_config, kernel_for
from esper_contracts import KernelQuery, SeedStage
from esper_kernels import LocalKernelLibrary
from esper_recipes import lm
from esper_recipes.chargpt import CharGPT, GPTShape
from esper_recipes.text import NextCharBatches, Vocabulary, generate_corpus, lm_task

SLOTS = ["transformer.h.*.attn.c_proj", "transformer.h.*.mlp.c_proj"]


def test_the_corpus_is_generated_the_same_way_every_time_and_split_without_overlap() -> None:
    text = generate_corpus(5_000, seed=3)
    assert text == generate_corpus(5_000, seed=3) != generate_corpus(5_000, seed=4)
    assert len(text) >= 5_000 and "The " in text
    assert " a apple" not in text and " a egg" not in text  # "an" before a vowel
    task = lm_task(5_000, block_size=16, seed=3)
    assert task.train.x.shape[1] == 16 and torch.equal(task.train.x[0, 1:], task.train.y[0, :-1])
    decoded = [task.vocab.decode(s.x.flatten()) for s in (task.train, task.val, task.test)]
    starts = [text.index(d) for d in decoded]  # each split is one contiguous stretch of the text...
    assert all(starts[i] + len(decoded[i]) <= starts[i + 1] for i in range(2))  # ...in order, never overlapping
    x, y = next(iter(NextCharBatches(task.train, 4)))
    assert x.shape == (4, 16) and y.shape == (64,)  # one target per position
    with pytest.raises(ValueError, match="'#' is not in the vocabulary"):
        Vocabulary.of("abc").encode("a#")


def grown_gpt(*families: str) -> CharGPT:
    """A 2-block CharGPT whose four seed slots carry kernels of ``families`` (in turn) at full blend, weights
    randomised."""
    torch.manual_seed(0)
    model = CharGPT(GPTShape(vocab_size=11, block_size=12, n_layer=2, n_head=2, d_model=8))
    library = LocalKernelLibrary()
    wrap(model, fast_config(target_modules=SLOTS), library)
    driver = Driver(model, torch.randint(0, 11, (4, 12)))
    model(driver.x)  # a Linear slot learns its layout (BTD here) from its first output
    for n, layer in enumerate(kasmina_layers(model)):
        kernel = kernel_for(model, library, layer, family=families[n % len(families)])
        driver.to_stage(layer, 0, kernel, SeedStage.FINE_TUNING)
    assert all(slot.stage(0) is SeedStage.FINE_TUNING for slot in kasmina_layers(model).values())
    with torch.no_grad():  # kernels start near identity: make every seed's contribution large
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model.eval()


def first_changed_position(model: CharGPT, position: int) -> int:
    """Change the token at ``position``; the first position whose logits moved (block_size if none)."""
    idx = torch.randint(0, 11, (2, 12), generator=torch.Generator().manual_seed(1))
    changed = idx.clone()
    changed[:, position] = (changed[:, position] + 1) % 11
    with torch.no_grad():
        a, b = model(idx).view(2, 12, -1), model(changed).view(2, 12, -1)
    moved = ((a - b).abs().amax(dim=(0, 2)) > 1e-6).nonzero()
    return int(moved[0]) if len(moved) else 12


def test_the_grown_model_stays_causal_with_per_position_kernels() -> None:
    model = grown_gpt("residual_mlp", "low_rank_adapter", "bottleneck")
    for position in (0, 5, 11):
        assert first_changed_position(model, position) == position  # later logits move, earlier ones never


def test_a_token_mixing_kernel_would_leak_the_future_so_the_demo_excludes_it(tmp_path: Path) -> None:
    # The built-in attention head is not masked: a seed carrying it lets earlier positions read later tokens.
    assert first_changed_position(grown_gpt("attention_head"), 5) < 5
    config_file = tmp_path / "lm.yaml"
    config_file.write_text("tamiyo: {kernel_tags_excluded: [cheap]}\n")  # a config that forgot the exclusion
    _settings, config = lm.load_lm_config(config_file)
    assert config.tamiyo.kernel_tags_excluded == ["cheap", "token_mixing"]
    library = LocalKernelLibrary()
    model = wrap(CharGPT(GPTShape(vocab_size=11, n_layer=1, d_model=8)), fast_config(target_modules=SLOTS), library)
    interface = kasmina_layers(model)["transformer.h.0.mlp.c_proj"].chunks.interface(0)
    offered = library.query(KernelQuery(interface=interface, tags_excluded=config.tamiyo.kernel_tags_excluded))
    assert offered.artifacts and not any("token_mixing" in a.tags for a in offered.artifacts)


TINY = """
lm: {corpus_chars: 6000, block_size: 16, n_layer: 4, n_head: 2, d_model: 8, mlp_ratio: 1, eval_batch_size: 64}
tolaria: {epochs: 4, batch_size: 32, optimizer: adamw, learning_rate: 0.01, seed_learning_rate: 0.01,
          checkpoints_kept: 1}
kasmina: {target_modules: ["transformer.h.*.attn.c_proj", "transformer.h.*.mlp.c_proj"], alpha_ramp_steps: 4,
          training_min_steps: 2, training_max_steps: 4, stabilization_steps: 2, evaluation_steps: 2,
          fine_tuning_steps: 2}
tamiyo: {warmup_epochs: 0, plateau_patience_epochs: 1, plateau_min_delta: 10.0, max_germinations: 1,
         blueprint_preference: [capacity], cull_regression_tolerance: 1.0}
"""


def test_the_demo_grows_the_gpt_under_tamiyo_prime_and_writes_its_report(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    config = tmp_path / "tiny-lm.yaml"
    config.write_text(TINY)
    assert lm.main(["--config", str(config), "--out", str(tmp_path)]) == 0
    out = tmp_path / "demo-lm"
    for name in ("model.pt", "lineage.json", "metrics.jsonl", "events.jsonl", "summary.json", "report.html"):
        assert (out / name).exists(), name
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["host_val_bpc"] < 8 and 0 < summary["esper_val_bpc"] < 8
    assert summary["esper_parameters"] > summary["host_parameters"]  # a seed grew and is counted
    domains = summary["domains"]
    # Slots on 4 blocks x (attention, MLP); the embeddings and the head hold none, so Prime funds only the blocks.
    assert {d: b["regions"] for d, b in domains.items()} == {
        "embedding_layer": 0, "early_transformer_blocks": 4, "mid_transformer_blocks": 4, "final_layers": 0}
    assert domains["embedding_layer"]["allocated"] == domains["final_layers"]["allocated"] == 0
    assert domains["early_transformer_blocks"]["allocated"] > 0 and domains["mid_transformer_blocks"]["allocated"] > 0
    spent = sum(b["spent"] for b in domains.values())
    assert spent > 0 and spent == pytest.approx(summary["control"]["atp_spent"])  # paid from a domain's ATP
    assert summary["control"]["germinations_decided"] >= summary["control"]["germinations_paid"] == 1
    germinations = json.loads((out / "lineage.json").read_text())["germinations"]
    assert len(germinations) == 1 and germinations[0]["blueprint_name"] != "attention_head"
    printed = " ".join(capsys.readouterr().out.split())
    assert "host alone: val_loss" in printed and "grown: val_loss" in printed and "Tamiyo-Prime" in printed
