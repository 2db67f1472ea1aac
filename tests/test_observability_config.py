"""The dashboards and their provisioning, checked offline: valid, portable, catalogued, shipped by compose and chart.

tests/integration/test_dashboards.py runs every query against real telemetry; this file checks what needs no
Prometheus: each dashboard is Grafana JSON with a unique uid, queries through the datasource variable, reads
only catalogued metrics, and is provisioned by docker compose and by the Helm chart (through its linked folders).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from esper_devtools.observability import dashboard_queries, metric_names, substitute, uncatalogued

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
CHART = ROOT / "deploy" / "helm" / "esper"


def test_the_four_dashboards_are_there_with_unique_uids() -> None:
    boards = {p.stem: json.loads(p.read_text()) for p in DASHBOARDS}
    assert set(boards) == {"esper-platform", "esper-morphogenesis", "esper-innovation", "esper-control-plane"}
    assert sorted(b["uid"] for b in boards.values()) == sorted(boards)
    for name, board in boards.items():
        ids = [p["id"] for p in board["panels"]]
        assert len(ids) == len(set(ids)) and board["panels"], name
        assert all(p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 for p in board["panels"]), name


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_panel_queries_catalogued_metrics_through_the_datasource_variable(path: Path) -> None:
    board = json.loads(path.read_text())
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and panel.get("description"), panel["title"]
    queries = list(dashboard_queries(path))
    assert queries
    for q in queries:
        assert uncatalogued(q.expr) == [], q.where
        assert metric_names(q.expr), f"{q.where} reads no metric"
    for name, variable in variables.items():  # $run and friends: their own queries read catalogued metrics too
        if variable["type"] == "query":
            found = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable["definition"])
            assert found, f"{name}: label_values(<selector>, <label>) expected"
            assert metric_names(found[1]) and uncatalogued(found[1]) == [], name


def test_the_morphogenesis_dashboard_follows_one_run() -> None:
    board = json.loads((ROOT / "deploy/grafana/dashboards/esper-morphogenesis.json").read_text())
    assert [v["name"] for v in board["templating"]["list"]] == ["datasource", "run"]
    for q in dashboard_queries(ROOT / "deploy/grafana/dashboards/esper-morphogenesis.json"):
        assert '"$run"' in q.expr, q.where
    titles = {p["title"] for p in board["panels"]}
    assert {"Accuracy", "Seeds by stage", "Parameters", "Germinations"} <= titles


def test_the_metric_name_reader() -> None:
    expr = ('histogram_quantile(0.95, sum by (le, pipeline) (rate(esper_tezzeret_compile_seconds_bucket'
            '[$__rate_interval]))) > on(pipeline) group_left() up{job="esper", x=~"a|b"} offset 5m')
    assert metric_names(expr) == {"esper_tezzeret_compile_seconds_bucket", "up"}
    assert uncatalogued('sum(esper_no_such_metric) + esper_run_epoch') == ["esper_no_such_metric"]
    assert substitute('esper_run_epoch{run="$run"}[$__rate_interval]', {"run": "r1"}) == 'esper_run_epoch{run="r1"}[1m]'


def test_docker_compose_provisions_the_dashboards_rules_and_nissa() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    grafana = compose["grafana"]["volumes"]
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards/esper:ro" in grafana
    provider = yaml.safe_load((ROOT / "deploy/grafana/provisioning/dashboards/esper.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards/esper"
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in compose["prometheus"]["volumes"]
    prometheus = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert prometheus["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    esper = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "esper")
    scraped = {t.split(":")[0] for t in esper["static_configs"][0]["targets"]}
    scraped |= {n for sd in esper.get("dns_sd_configs", []) for n in sd["names"]}
    runnable = {"urza", "tamiyo", "narset-coordinator", "tezzeret", "urabrask", "karn", "nissa"}
    assert runnable <= scraped and runnable <= set(compose)


def test_the_chart_ships_the_repository_s_files_not_copies() -> None:
    # The chart's dashboards/ and rules/ are links to the repository's folders, so they cannot drift apart;
    # deploy/check.sh renders the chart and checks that every file is in its ConfigMaps.
    assert (CHART / "dashboards").is_symlink() and (CHART / "dashboards").resolve() == DASHBOARDS[0].parent
    assert (CHART / "rules").is_symlink()
    assert (CHART / "rules").resolve() == (ROOT / "deploy/prometheus/rules").resolve()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["observability"]["grafanaDashboards"]["labels"] == {"grafana_dashboard": "1"}
    assert values["services"]["nissa"]["enabled"] and values["services"]["nissa"]["replicas"] == 1
