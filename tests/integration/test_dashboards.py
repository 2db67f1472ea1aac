"""Every Grafana panel and alert rule answers from real telemetry (issue 15): services to Prometheus to queries.

The platform runs as separate processes on the real Pulsar broker (under a topic prefix of its own): Urza,
Tezzeret, Urabrask, Tamiyo, the Narset coordinator, Karn and Nissa. The trainer's kernels are compiled and
validated, then ``esper train`` grows a model on the platform. The local Prometheus scrapes every service
(the ``prometheus_targets`` fixture adds them to its ``esper`` job), and then every query of every dashboard
in deploy/grafana/dashboards/ runs against it: each must return data, with a finite value, and read only
catalogued metrics. The alert rules are loaded in the same Prometheus and must evaluate without error.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from esper.config import EsperConfig
from esper_devtools.observability import dashboard_queries, substitute, uncatalogued
from esper_devtools.processes import ESPER, ROOT, Proc, free_port
from esper_urza_client import UrzaClient

from .test_platform_e2e import KASMINA, TAMIYO_POLICY, _wait, germinated, submit_kernels_for_the_trainer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1800)]

DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
SERVICES = ("urza", "tezzeret", "urabrask", "tamiyo", "narset-coordinator", "karn", "nissa")
EPOCHS = 10


@dataclass
class Platform:
    """What submit_kernels_for_the_trainer and the run need of the running platform."""

    urza_url: str
    coordinator_url: str
    bus_url: str
    topic_prefix: str
    hardware: str
    procs: dict[str, Proc]
    tmp: Path

    def urza(self) -> UrzaClient:
        """A client of Urza (this platform runs without authentication, as a developer's would)."""
        return UrzaClient(self.urza_url)

    def run_config(self, run_id: str) -> Path:
        config = {
            "tolaria": {"epochs": EPOCHS, "task": "spirals", "run_dir": str(self.tmp / "runs"), "run_id": run_id,
                        "learning_rate": 0.01, "progress_bar": False, "hardware": self.hardware},
            "kasmina": KASMINA,
            "platform": {"bus_url": self.bus_url, "urza_url": self.urza_url, "coordinator_url": self.coordinator_url,
                         "topic_prefix": self.topic_prefix, "decision_timeout_s": 60, "connect_timeout_s": 30},
        }
        EsperConfig.model_validate(config)
        path = self.tmp / f"{run_id}.yaml"
        path.write_text(json.dumps(config))
        return path


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, pulsar_url: str) -> Iterator[Platform]:
    tmp = tmp_path_factory.mktemp("dashboards")
    run = uuid.uuid4().hex[:8]
    prefix, hardware = f"dash{run}.", f"cpu_dash{run}"
    base = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}
    base |= {"ESPER_BUS_URL": pulsar_url, "ESPER_TOPIC_PREFIX": prefix, "ESPER_LOG_FORMAT": "text",
             "PYTHONUNBUFFERED": "1"}
    ports = {name: free_port() for name in SERVICES}
    urza_url = f"http://127.0.0.1:{ports['urza']}"
    workers = base | {"ESPER_URZA_URL": urza_url, "ESPER_HARDWARE": hardware, "ESPER_NACK_DELAY_MS": "500"}
    envs = {
        "urza": base | {"ESPER_DATA_DIR": str(tmp / "urza"), "ESPER_SEED_LIBRARY": "false",
                        "ESPER_PIPELINES": '["fast"]', "ESPER_HARDWARE": f'["{hardware}"]',
                        "ESPER_OUTBOX_INTERVAL_S": "0.5"},
        "tezzeret": workers,
        "urabrask": workers | {"ESPER_BUDGET_S": "2"},
        "tamiyo": base | {"ESPER_URZA_URL": urza_url, "ESPER_POLICY": json.dumps(TAMIYO_POLICY)},
        "narset-coordinator": base | {"ESPER_SEEDS_PER_WORKER": "4"},
        "karn": base | {"ESPER_DATA_DIR": str(tmp / "karn"), "ESPER_URZA_URL": urza_url,
                        "ESPER_AUTO_PROPOSE": "false"},
        "nissa": base,
    }
    procs = {name: Proc(name, env | {"ESPER_PORT": str(ports[name])}, tmp) for name, env in envs.items()}
    try:
        for proc in procs.values():
            proc.start()
        yield Platform(urza_url, f"http://127.0.0.1:{ports['narset-coordinator']}", pulsar_url, prefix, hardware,
                       procs, tmp)
    except BaseException:
        for p in procs.values():
            sys.stderr.write(f"\n----- {p.service} log -----\n{p.tail(60)}\n")
        raise
    finally:
        for p in procs.values():
            p.stop()


def query(prometheus_url: str, expr: str) -> list[dict[str, Any]]:
    """An instant query's result; AssertionError with Prometheus's error for a query it refuses."""
    answer = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=30).json()
    assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def finite(result: list[dict[str, Any]]) -> list[float]:
    return [float(r["value"][1]) for r in result if math.isfinite(float(r["value"][1]))]


def test_every_panel_returns_data_from_a_real_run(platform: Platform, prometheus_url: str,
                                                  prometheus_targets: Any) -> None:
    instances = {name: prometheus_targets.add(name, proc.port) for name, proc in platform.procs.items()}

    def every_service_scraped() -> bool:
        up = {r["metric"]["instance"]: float(r["value"][1]) for r in query(prometheus_url, 'up{job="esper"}')}
        return all(up.get(i) == 1.0 for i in instances.values())

    # Before any work: counters must be seen at their starting values, or an increase over the run is nothing.
    _wait("Prometheus to scrape every service once", every_service_scraped, 120)
    submit_kernels_for_the_trainer(platform)  # type: ignore[arg-type]
    run_id = f"dash-{uuid.uuid4().hex[:6]}"
    run_dir = platform.tmp / "runs" / run_id
    trained = subprocess.run([ESPER, "train", str(platform.run_config(run_id)), "--quiet"], capture_output=True,
                             text=True, timeout=900, cwd=ROOT,
                             env={k: v for k, v in os.environ.items() if not k.startswith("ESPER_")})
    assert trained.returncode == 0, trained.stdout + trained.stderr

    # Prometheus has the run's last heartbeat (scraped from Nissa, not from the trainer) and every service.
    def scraped() -> bool:
        epoch = finite(query(prometheus_url, f'esper_run_epoch{{run="{run_id}"}}'))
        up = {r["metric"]["instance"]: float(r["value"][1]) for r in query(prometheus_url, 'up{job="esper"}')}
        return epoch == [EPOCHS] and all(up.get(i) == 1.0 for i in instances.values())

    _wait("Prometheus to scrape the finished run from Nissa", scraped, 120)
    time.sleep(3)  # a few more scrapes, so rates over the last minute have two samples of everything

    empty, refused, stray = [], [], []
    for path in DASHBOARDS:
        for q in dashboard_queries(path):
            stray += [f"{q.where}: {name}" for name in uncatalogued(q.expr)]
            try:
                values = finite(query(prometheus_url, substitute(q.expr, {"run": run_id})))
            except AssertionError as exc:
                refused.append(f"{q.where}: {exc}")
                continue
            if not values:
                empty.append(f"{q.where}: {q.expr}")
    assert not stray, "panels reading uncatalogued metrics:\n" + "\n".join(stray)
    assert not refused, "queries Prometheus refused:\n" + "\n".join(refused)
    assert not empty, "panels without data:\n" + "\n".join(empty)

    # The morphogenesis dashboard's run picker lists the run; the figures are the run's own.
    runs = httpx.get(f"{prometheus_url}/api/v1/label/run/values", params={"match[]": "esper_run_epoch"}).json()
    assert run_id in runs["data"]
    grown = [g for g in germinated(run_dir) if g[1] < EPOCHS]  # seen by Nissa at the next heartbeat
    seen = finite(query(prometheus_url, f'esper_run_germinations_total{{run="{run_id}"}}'))
    assert grown and 1 <= seen[0] <= len(grown), (seen, grown)
    seeds = finite(query(prometheus_url, f'sum(esper_run_seeds{{run="{run_id}"}})'))
    assert seeds == [float(len(finite(query(prometheus_url, f'esper_seed_alpha{{run="{run_id}"}}'))))]
    validated = finite(query(prometheus_url, f'esper_urza_artifacts{{status="VALIDATED", '
                                             f'instance="{instances["urza"]}"}}'))
    assert validated and validated[0] >= 1


def test_the_alert_rules_are_loaded_and_evaluate(prometheus_url: str, prometheus_targets: Any) -> None:
    # prometheus_targets reconfigures a Prometheus started by older scripts, rules included.
    def evaluated() -> list[dict[str, Any]]:
        groups = httpx.get(f"{prometheus_url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"] if g["name"].startswith("esper-")]
        return rules if rules and all(r.get("lastEvaluation", "").startswith("2") and
                                      not r["lastEvaluation"].startswith("0001") for r in rules) else []

    rules = _wait("the alert rules to be evaluated", evaluated, 60)
    assert {r["name"] for r in rules} >= {"EsperServiceDown", "EsperDeadLettersGrowing", "EsperRollbackStorm",
                                         "EsperPipelineBacklog", "EsperBudgetExhausted"}
    assert [r["name"] for r in rules if r["health"] != "ok"] == []
