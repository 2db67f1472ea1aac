"""make evolve: the figures it ends with, and the whole loop on a very short run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from esper_recipes import evolve
from esper_recipes.evolve_report import Child, Episode, Generation, draw, fossil_ratio, halves, summary_lines


def _generation(index: int, outcomes: list[list[str]], validated: int = 2, diversity: float = 2.0) -> Generation:
    children = [Child(f"{index}{i}", f"c{index}{i}", index, "p", "swap_activation", validated=i < validated)
                for i in range(2)]
    return Generation(index, children, [Episode(s, 0.8, o) for s, o in enumerate(outcomes)], diversity)


def test_rates_halves_and_the_bootstrap_interval() -> None:
    f, c = "FOSSILIZED", "CULLED"
    gens = [_generation(0, [[f]]), _generation(1, [[c, c], [f, c]]), _generation(2, [[c], [c]], validated=1),
            _generation(3, [[f, c], [f]]), _generation(4, [[f], [f, f]])]
    first, last = halves(gens)
    assert [g.index for g in first] == [1, 2] and [g.index for g in last] == [3, 4]
    point, lo, hi = fossil_ratio(gens)
    assert point == pytest.approx((5 / 6) / (1 / 6))
    assert lo <= point <= hi or math.isinf(hi)
    lines = summary_lines(gens, diversity_end=3.0)
    assert lines[0] == "karn_children_validated_fraction: 0.875 (7/8 children)"
    assert lines[1].startswith("karn_fossilized_rate_last_vs_first: 5.000 (95% CI ")
    assert "last generations 3-4: 5/6 fossilized, first generations 1-2: 1/6 fossilized" in lines[1]
    assert lines[2] == "library_diversity_last_vs_first: 1.500 (2.000 -> 3.000)"


def test_no_fossil_in_the_first_half_gives_no_finite_ratio() -> None:
    gens = [_generation(1, [["CULLED"]]), _generation(2, [["FOSSILIZED"]])]
    assert fossil_ratio(gens)[0] == math.inf


def test_the_figure_is_a_png(tmp_path: Path) -> None:
    gens = [_generation(0, [["FOSSILIZED"]]), _generation(1, [["CULLED"]])]
    gens[1].children[0].parent_id = gens[0].children[0].blueprint_id
    draw(gens, tmp_path / "e.png", "t")
    assert (tmp_path / "e.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_short_evolution_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert evolve.main(["--generations", "2", "--children", "2", "--episodes", "1", "--epochs", "16",
                        "--out", str(tmp_path)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-3:]
    assert [line.split(":")[0] for line in last] == ["karn_children_validated_fraction",
                                                     "karn_fossilized_rate_last_vs_first",
                                                     "library_diversity_last_vs_first"]
    doc = json.loads((tmp_path / "evolve.json").read_text())
    assert [g["index"] for g in doc["generations"]] == [0, 1, 2]
    children = [c for g in doc["generations"][1:] for c in g["children"]]
    known = {c["blueprint_id"] for g in doc["generations"] for c in g["children"]}
    assert children and all(c["parent_id"] in known and c["operator"] for c in children)
    assert doc["karn_status"]["children"] == len(children)
    assert (tmp_path / "evolve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
