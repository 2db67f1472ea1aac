"""The distributed platform trains a model end to end (issue 10), every part its own OS process on real services.

Urza (PostgreSQL + S3), Tezzeret, Urabrask, Tamiyo and the Narset coordinator run as ``esper serve <name>`` on the
real Pulsar broker; ``esper train`` runs as another process with a ``platform:`` section. The trainer's seed
slots get the built-in blueprints submitted to Urza: Tezzeret compiles them, Urabrask validates and tags them,
the Tamiyo service chooses one through Urza's query, Kasmina fetches and loads it, and it reaches FOSSILIZED;
the field report is stored in Urza and the run's lineage names the artifact id.

The platform runs in production mode: every service verifies RS256 tokens against a JWKS (a test identity
provider's), and each service and the trainer call with a token of their own role.

Faults, in the same platform: Tamiyo killed (-9) mid-run and restarted (the run completes and Tamiyo continues
from the state the trainer checkpointed), and the trainer killed (-9) then ``esper train --resume`` (the run
continues from its last checkpoint; no epoch is trained twice and no adaptation is made twice).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import torch

from esper.config import EsperConfig, PlatformConfig
from esper.kasmina import KasminaConfig, wrap
from esper.standalone import slot_interfaces
from esper.tasks import spirals
from esper.train import PlatformUnreachableError, check_platform, default_host
from esper_contracts import ArtifactId, KernelStatus, builtin_blueprints
from esper_devtools.processes import ESPER, ROOT, Proc, free_port
from esper_kernels import LocalKernelLibrary
from esper_runtime.testing import TestIdentityProvider
from esper_urza_client import UrzaClient

pytestmark = [pytest.mark.integration, pytest.mark.timeout(1500)]

KASMINA = {"chunks_per_layer": 1, "include_head": True, "training_min_steps": 2, "training_max_steps": 10,
           "alpha_ramp_steps": 10, "stabilization_steps": 4, "evaluation_steps": 4, "fine_tuning_steps": 10}
TAMIYO_POLICY = {"warmup_epochs": 1, "plateau_patience_epochs": 1, "plateau_min_delta": 10.0,
                 "max_concurrent_adaptations": 1, "max_germinations": 2, "evaluation_epochs": 1,
                 "fine_tuning_epochs": 1, "min_improvement": -1.0, "cull_regression_tolerance": 1.0,
                 "stage_timeout_epochs": 3}


@dataclass
class Platform:
    urza_url: str
    coordinator_url: str
    bus_url: str
    hardware: str
    procs: dict[str, Proc]
    tmp: Path
    idp: TestIdentityProvider

    def urza(self) -> UrzaClient:
        """A client of Urza with an operator's token (it submits blueprints)."""
        return UrzaClient(self.urza_url, token=self.idp.token("operator", subject="e2e-test", lifetime_s=3600))

    def trainer_env(self) -> dict[str, str]:
        """The trainer's environment: its own tokens for Urza (viewer) and the coordinator (operator)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}
        return env | {"ESPER_URZA_TOKEN": self.idp.token("viewer", subject="trainer", lifetime_s=3600),
                      "ESPER_COORDINATOR_TOKEN": self.idp.token("operator", subject="trainer", lifetime_s=3600)}

    def run_config(self, run_id: str, epochs: int) -> Path:
        config = {
            "tolaria": {"epochs": epochs, "task": "spirals", "run_dir": str(self.tmp / "runs"), "run_id": run_id,
                        "learning_rate": 0.01, "progress_bar": False, "hardware": self.hardware},
            "kasmina": KASMINA,
            "platform": {"bus_url": self.bus_url, "urza_url": self.urza_url, "coordinator_url": self.coordinator_url,
                         "decision_timeout_s": 180, "connect_timeout_s": 30},
        }
        EsperConfig.model_validate(config)  # a typo here should fail here, not in the subprocess
        path = self.tmp / f"{run_id}.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        return path


def _wait(what: str, probe: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, pulsar_url: str, postgres_url: str,
             s3_config: dict[str, str]) -> Iterator[Platform]:
    from sqlalchemy import create_engine, make_url, text

    tmp = tmp_path_factory.mktemp("platform")
    run = uuid.uuid4().hex[:8]
    hardware = f"cpu_e2e{run}"  # a label of this test's own: the shared broker's other jobs are skipped
    server = make_url(postgres_url).set(drivername="postgresql+psycopg")
    database = f"esper_e2e_{run}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{database}"'))
    database_url = server.set(database=database).render_as_string(hide_password=False)
    blob_url = "s3://esper-e2e/" + run + "?" + urlencode({
        "endpoint_url": s3_config["endpoint_url"], "access_key_id": s3_config["access_key"],
        "secret_access_key": s3_config["secret_key"], "region": s3_config.get("region", "us-east-1")})

    idp = TestIdentityProvider()
    base = {k: v for k, v in os.environ.items() if not k.startswith("ESPER_")}
    base |= {"ESPER_BUS_URL": pulsar_url, "ESPER_LOG_FORMAT": "text", "PYTHONUNBUFFERED": "1",
             "ESPER_AUTH_JWKS": str(idp.write_jwks(tmp / "jwks.json")), "ESPER_AUTH_ISSUER": idp.issuer}
    ports = {name: free_port() for name in ("urza", "tezzeret", "urabrask", "tamiyo", "narset-coordinator")}
    urza_url = f"http://127.0.0.1:{ports['urza']}"

    def token(role: str, service: str) -> dict[str, str]:
        return {"ESPER_URZA_TOKEN": idp.token(role, subject=service, lifetime_s=3600)}

    workers = base | {"ESPER_URZA_URL": urza_url, "ESPER_HARDWARE": hardware, "ESPER_NACK_DELAY_MS": "500",
                      "ESPER_SUBSCRIPTION": ""}
    envs = {
        "urza": base | {"ESPER_DATABASE_URL": database_url, "ESPER_BLOB_URL": blob_url, "ESPER_SEED_LIBRARY": "false",
                        "ESPER_PIPELINES": '["fast"]', "ESPER_HARDWARE": f'["{hardware}"]', "ESPER_BATCH_SIZE": "8",
                        "ESPER_OUTBOX_INTERVAL_S": "0.5", "ESPER_SUBSCRIPTION": f"urza-{run}",
                        "ESPER_DATA_DIR": str(tmp / "urza")},
        "tezzeret": workers | token("operator", "tezzeret") | {"ESPER_SUBSCRIPTION": f"tezzeret-{run}"},
        "urabrask": workers | token("viewer", "urabrask") | {"ESPER_SUBSCRIPTION": f"urabrask-{run}",
                                                              "ESPER_BUDGET_S": "2"},
        "tamiyo": base | token("viewer", "tamiyo") | {"ESPER_URZA_URL": urza_url,
                                                      "ESPER_POLICY": json.dumps(TAMIYO_POLICY)},
        "narset-coordinator": base | {"ESPER_SEEDS_PER_WORKER": "4"},
    }
    procs = {name: Proc(name, env | {"ESPER_PORT": str(ports[name])}, tmp) for name, env in envs.items()}
    try:
        for proc in procs.values():
            proc.start()
        yield Platform(urza_url, f"http://127.0.0.1:{ports['narset-coordinator']}", pulsar_url, hardware, procs, tmp,
                       idp)
    except BaseException:
        for p in procs.values():
            sys.stderr.write(f"\n----- {p.service} log -----\n{p.tail(80)}\n")
        raise
    finally:
        for p in procs.values():
            p.stop()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        admin.dispose()


def submit_kernels_for_the_trainer(platform: Platform) -> list[str]:
    """The built-in blueprints for every seed slot of the trainer's model, submitted and waited to VALIDATED."""
    torch.manual_seed(0)
    probe = wrap(default_host(spirals(0)), KasminaConfig(**KASMINA), LocalKernelLibrary())
    urza = platform.urza()
    ids = [urza.submit_blueprint(ir).blueprint_id for i in slot_interfaces(probe) for ir in builtin_blueprints(i)]

    def settled() -> bool:
        arts = [a for bid in ids for a in urza.blueprint(bid).artifacts if a.hardware == platform.hardware]
        return len(arts) == len(ids) and all(a.status in (KernelStatus.VALIDATED, KernelStatus.REJECTED,
                                                          KernelStatus.FAILED) for a in arts)

    _wait("the trainer's kernels to be compiled and validated", settled, 600)
    validated = [a.artifact_id for bid in ids for a in urza.blueprint(bid).artifacts
                 if a.status is KernelStatus.VALIDATED]
    assert validated, "no kernel passed Urabrask"
    urza.close()
    return validated


def train(platform: Platform, *args: str, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ESPER, "train", *args, "--quiet"], capture_output=True, text=True, timeout=timeout_s,
                          cwd=ROOT, env=platform.trainer_env())


def germinated(run_dir: Path) -> list[tuple[str, int]]:
    """(seed, epoch) of every GERMINATED transition in the run's event log."""
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    return [(e["seed"], e["epoch"]) for e in events if e.get("kind") == "transition" and e.get("new") == "GERMINATED"]


def metrics_epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_the_platform_runs_in_production_mode_with_tokens(platform: Platform) -> None:
    import httpx

    def url(service: str, path: str) -> str:
        return f"http://127.0.0.1:{platform.procs[service].port}{path}"

    viewer = {"Authorization": f"Bearer {platform.idp.token('viewer')}"}
    for service, path in (("urza", "/api/v1/blueprints"), ("tamiyo", "/api/v1/policy"),
                          ("narset-coordinator", "/api/v1/workers")):
        refused = httpx.get(url(service, path), timeout=10)
        assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer"), service
        assert httpx.get(url(service, path), headers=viewer, timeout=10).status_code == 200, service
    assert httpx.post(url("tamiyo", "/api/v1/policy"), json={}, headers=viewer, timeout=10).status_code == 403
    other = TestIdentityProvider()  # a token no configured key signed
    forged = {"Authorization": f"Bearer {other.token('admin', kid=platform.idp.kid)}"}
    assert httpx.get(url("urza", "/api/v1/blueprints"), headers=forged, timeout=10).status_code == 401


def test_a_blueprint_goes_from_urza_to_fossilized_in_a_run_that_survives_a_tamiyo_crash(platform: Platform) -> None:
    validated = submit_kernels_for_the_trainer(platform)
    config = platform.run_config("e2e-fossil", epochs=16)
    run_dir = platform.tmp / "runs" / "e2e-fossil"
    trainer = subprocess.Popen([ESPER, "train", str(config), "--quiet"], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=platform.trainer_env())
    try:
        # Tamiyo dies (no shutdown hook) while an adaptation it decided is live, and comes back: only the state
        # the trainer checkpointed lets the restarted Tamiyo steer that seed on to FOSSILIZED.
        _wait("the first germination of the run", lambda: (run_dir / "events.jsonl").exists() and germinated(run_dir),
              400)
        platform.procs["tamiyo"].kill()
        time.sleep(2)
        platform.procs["tamiyo"].start()
        out, _ = trainer.communicate(timeout=900)
    finally:
        if trainer.poll() is None:
            trainer.kill()
    assert trainer.returncode == 0, out + platform.procs["tamiyo"].tail()
    assert metrics_epochs(run_dir) == list(range(1, 17))

    lineage = json.loads((run_dir / "lineage.json").read_text())
    fossilized = [g for g in lineage["germinations"] if g.get("outcome") == "FOSSILIZED"]
    assert fossilized, lineage["germinations"]
    kernel_ids = {g["kernel_artifact_id"] for g in fossilized}
    assert kernel_ids <= set(validated), (kernel_ids, validated)
    # No adaptation was made twice across the restart, and the policy's cap held: it resumed its own books.
    germinations = germinated(run_dir)
    assert len(germinations) == len(set(germinations)) and len(germinations) <= TAMIYO_POLICY["max_germinations"]
    # The restarted Tamiyo asked for the trainer's checkpointed state and continued from it.
    assert "resending epoch" in out, out
    urza = platform.urza()
    blueprint_id = ArtifactId.parse(next(iter(kernel_ids))).blueprint_id
    reports = urza.http.get(f"/api/v1/blueprints/{blueprint_id}/field-reports").json()
    assert any(r["outcome"] == "FOSSILIZED" for r in reports["items"]), reports
    urza.close()


def test_a_killed_trainer_resumes_from_its_last_checkpoint_with_nothing_applied_twice(platform: Platform) -> None:
    submit_kernels_for_the_trainer(platform)
    config = platform.run_config("e2e-resume", epochs=10)
    run_dir = platform.tmp / "runs" / "e2e-resume"
    trainer = subprocess.Popen([ESPER, "train", str(config), "--quiet"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, cwd=ROOT, env=platform.trainer_env())
    try:
        _wait("epoch 5 of the run", lambda: (run_dir / "metrics.jsonl").exists() and len(metrics_epochs(run_dir)) >= 5,
              300)
    finally:
        trainer.kill()  # SIGKILL: mid-epoch, nothing flushed
        trainer.wait(30)
    done = metrics_epochs(run_dir)
    resumed = train(platform, "--resume", str(run_dir))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert metrics_epochs(run_dir) == list(range(1, 11)), "every epoch once, in order"
    assert metrics_epochs(run_dir)[: len(done)] == done
    germinations = germinated(run_dir)
    assert len(germinations) == len(set(germinations)), f"a germination was applied twice: {germinations}"
    lineage = json.loads((run_dir / "lineage.json").read_text())
    assert [(g["seed_id"], g["germinated_epoch"]) for g in lineage["germinations"]] == germinations


def test_a_trainer_whose_platform_is_down_stops_naming_the_url(tmp_path: Path) -> None:
    config = tmp_path / "down.yaml"
    config.write_text(json.dumps({"tolaria": {"epochs": 1, "run_dir": str(tmp_path / "runs")},
                                  "platform": {"bus_url": "pulsar://127.0.0.1:1", "urza_url": "http://127.0.0.1:1",
                                               "coordinator_url": "http://127.0.0.1:1", "connect_timeout_s": 5}}))
    result = subprocess.run([ESPER, "train", str(config)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 3 and "pulsar://127.0.0.1:1" in "".join(result.stdout.split())
    assert not (tmp_path / "runs").exists()
    # The wait is bounded by connect_timeout_s, measured in process: the subprocess's wall time is mostly the
    # interpreter importing torch, which a loaded CI machine can stretch to minutes (seen: 120 s at load 15).
    start = time.monotonic()
    with pytest.raises(PlatformUnreachableError, match=r"pulsar://127\.0\.0\.1:1"):
        check_platform(PlatformConfig(bus_url="pulsar://127.0.0.1:1", urza_url="http://127.0.0.1:1",
                                      coordinator_url="http://127.0.0.1:1", connect_timeout_s=5))
    assert time.monotonic() - start < 15

