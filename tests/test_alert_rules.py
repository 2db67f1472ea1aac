"""Esper's alert rules: valid, unit-tested with promtool (each alert firing and quiet), reading catalogued metrics.

promtool ships with Debian's prometheus package, which infra/install-deps.sh installs; without it these tests
fail with that instruction, they do not skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from esper_devtools.observability import rule_queries, uncatalogued

ROOT = Path(__file__).resolve().parents[1]
RULES = sorted((ROOT / "deploy" / "prometheus" / "rules").glob("*.yml"))
UNIT_TESTS = sorted((ROOT / "deploy" / "prometheus" / "tests").glob("*.yml"))


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool not found: run `bash infra/install-deps.sh prometheus` (Debian's prometheus package)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def alerts() -> set[str]:
    return {rule["alert"] for path in RULES for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"] if "alert" in rule}


def test_the_rule_files_are_valid() -> None:
    assert RULES and UNIT_TESTS
    result = promtool("check", "rules", *map(str, RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_tested_firing_and_quiet() -> None:
    fired: set[str] = set()
    quiet: set[str] = set()
    for path in UNIT_TESTS:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts() - fired == set(), "alerts no test shows firing"
    assert alerts() - quiet == set(), "alerts no test shows quiet"
    assert {"EsperServiceDown", "EsperDeadLettersGrowing", "EsperRollbackStorm", "EsperPipelineBacklog",
            "EsperBudgetExhausted"} <= alerts()


@pytest.mark.parametrize("query", [q for path in RULES for q in rule_queries(path)], ids=lambda q: q.where)
def test_rules_read_only_catalogued_metrics(query: object) -> None:
    assert uncatalogued(query.expr) == [], query.where  # type: ignore[attr-defined]


def test_a_broken_rule_fails_its_unit_test(tmp_path: Path) -> None:
    # The unit tests are not a formality: lengthen one alert's wait and its firing case must fail.
    rules = tmp_path / "rules"
    rules.mkdir()
    text = RULES[0].read_text().replace("for: 2m", "for: 20m")
    (rules / RULES[0].name).write_text(text)
    tests = tmp_path / "tests"
    tests.mkdir()
    for path in UNIT_TESTS:
        (tests / path.name).write_text(path.read_text())
    result = promtool("test", "rules", *map(str, sorted(tests.glob("*.yml"))))
    assert result.returncode != 0 and "EsperServiceDown" in result.stdout + result.stderr
