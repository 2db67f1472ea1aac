"""The deploy check bites: KEDA ScaledObjects that KEDA would reject fail `keda-check`, the chart's pass.

helm and keda-check are built from their Go modules by ``deploy/check.sh tools`` (minutes the first time
on a machine, cached after), hence ``slow``.
"""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "deploy" / "helm" / "esper"

pytestmark = pytest.mark.slow

Manifest = dict[str, Any]


@pytest.fixture(scope="module")
def tools() -> tuple[Path, Path]:
    """(helm, keda-check), built and cached by the deploy check itself."""
    result = subprocess.run(["bash", str(ROOT / "deploy" / "check.sh"), "tools"], capture_output=True, text=True,
                            check=True, timeout=3600)
    helm, keda_check = result.stdout.split()[-2:]
    return Path(helm), Path(keda_check)


def _render(helm: Path, *sets: str) -> list[Manifest]:
    args = [str(helm), "template", "esper", str(CHART), "--kube-version", "1.31.0"]
    for value in sets:
        args += ["--set", value]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def _scaled_objects(docs: list[Manifest]) -> dict[str, Manifest]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == "ScaledObject"}


def _keda_check(keda_check: Path, tmp_path: Path, docs: list[Manifest],
                expect: int = 1) -> subprocess.CompletedProcess[str]:
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return subprocess.run([str(keda_check), "-expect", str(expect), str(manifest)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def rendered(tools: tuple[Path, Path]) -> list[Manifest]:
    return _render(tools[0])


def test_chart_scaled_objects_scale_the_pools_on_their_job_subscriptions(rendered: list[Manifest]) -> None:
    scaled = _scaled_objects(rendered)
    assert set(scaled) == {"esper-tezzeret", "esper-urabrask"}
    for pool, topic in (("tezzeret", "compilation.jobs"), ("urabrask", "validation.jobs")):
        spec = scaled[f"esper-{pool}"]["spec"]
        assert spec["scaleTargetRef"]["name"] == f"esper-{pool}"
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "pulsar"
        assert trigger["metadata"]["topic"] == f"persistent://public/default/{topic}"
        assert trigger["metadata"]["subscription"] == f"{pool}-h100"  # the pool's default for ESPER_HARDWARE
        assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    deployments = {doc["metadata"]["name"]: doc for doc in rendered if doc["kind"] == "Deployment"}
    assert "replicas" not in deployments["esper-tezzeret"]["spec"]  # KEDA's HPA owns the count
    assert deployments["esper-urza"]["spec"]["replicas"] == 1


def test_chart_topics_are_the_ones_the_pools_consume(rendered: list[Manifest]) -> None:
    # The topic a pool consumes is its service's jobs_topic (a contracts constant); a rename must show up here.
    from esper_tezzeret.service import TezzeretService
    from esper_urabrask.service import UrabraskService

    for pool, service in (("tezzeret", TezzeretService), ("urabrask", UrabraskService)):
        topic = _scaled_objects(rendered)[f"esper-{pool}"]["spec"]["triggers"][0]["metadata"]["topic"]
        assert topic.rsplit("/", 1)[1] == service.jobs_topic


def test_trainer_job_runs_esper_train_with_gpu_configmap_and_secret(rendered: list[Manifest]) -> None:
    (job,) = [doc for doc in rendered if doc["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["esper", "train", "/etc/esper/run.yaml"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["envFrom"] == [{"secretRef": {"name": "esper-trainer-credentials", "optional": True}}]
    volumes = {v["name"]: v for v in pod["volumes"]}
    config_maps = {doc["metadata"]["name"]: doc for doc in rendered if doc["kind"] == "ConfigMap"}
    config_map = config_maps[volumes["config"]["configMap"]["name"]]
    run = yaml.safe_load(config_map["data"]["run.yaml"])
    assert run["tolaria"]["task"] == "spirals"
    assert run["platform"] == {"bus_url": "pulsar://pulsar-broker.pulsar.svc.cluster.local:6650",
                               "urza_url": "http://esper-urza:8000",
                               "coordinator_url": "http://esper-narset-coordinator:8000"}
    assert not [doc for doc in rendered if doc["kind"] == "Secret"]  # no default credentials ship


def test_trainer_job_resumes_a_named_run(tools: tuple[Path, Path]) -> None:
    docs = _render(tools[0], "trainer.resume=run-7", "trainer.runsClaim=runs")
    (job,) = [doc for doc in docs if doc["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"] == ["esper", "train", "/etc/esper/run.yaml", "--resume", "/app/runs/run-7"]
    assert {"name": "runs", "persistentVolumeClaim": {"claimName": "runs"}} in pod["volumes"]


def test_keda_check_accepts_the_chart(tools: tuple[Path, Path], rendered: list[Manifest], tmp_path: Path) -> None:
    result = _keda_check(tools[1], tmp_path, rendered, expect=2)
    assert result.returncode == 0, result.stderr
    assert "2 ScaledObjects valid against KEDA v2." in result.stdout


def test_keda_check_fails_a_chart_rendered_with_min_above_max(tools: tuple[Path, Path], tmp_path: Path) -> None:
    docs = _render(tools[0], "services.tezzeret.autoscaling.minReplicas=9")
    result = _keda_check(tools[1], tmp_path, docs)
    assert result.returncode == 1
    assert 'ScaledObject "esper-tezzeret": MinReplicaCount=9 must be less than MaxReplicaCount=8' in result.stderr


def _set(path: str, value: Any) -> Callable[[Manifest], None]:
    """A mutation that sets (or, for value ``...``, deletes) the dotted ``path`` of a manifest."""
    def mutate(doc: Manifest) -> None:
        *parents, leaf = path.split(".")
        node: Any = doc
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if value is ...:
            del node[leaf]
        else:
            node[leaf] = value
    return mutate


BROKEN = {
    "unknown spec field": (_set("spec.maxReplicas", 3), 'unknown field "maxReplicas"'),
    "unknown trigger field": (_set("spec.triggers.0.metdata", {}), 'unknown field "metdata"'),
    "wrong type for a count": (_set("spec.minReplicaCount", "one"), "cannot unmarshal string"),
    "non-string trigger metadata": (_set("spec.triggers.0.metadata.msgBacklogThreshold", 4), "cannot unmarshal number"),
    "no trigger": (_set("spec.triggers", []), "no triggers defined"),
    "triggers missing": (_set("spec.triggers", ...), "no triggers defined"),
    "trigger without type": (_set("spec.triggers.0.type", ...), "spec.triggers[0].type is required"),
    "no scale target": (_set("spec.scaleTargetRef", ...), "spec.scaleTargetRef.name is required"),
    "wrong apiVersion": (_set("apiVersion", "keda.sh/v1"), 'KEDA serves ScaledObjects as "keda.sh/v1alpha1"'),
    "idle not below min": (_set("spec.idleReplicaCount", 1), "IdleReplicaCount=1 must be less than MinReplicaCount=1"),
    # The pulsar trigger's metadata, parsed by KEDA's own pulsar scaler.
    "pulsar without subscription": (_set("spec.triggers.0.metadata.subscription", ...),
                                    'missing required parameter "subscription"'),
    "pulsar threshold not a number": (_set("spec.triggers.0.metadata.msgBacklogThreshold", "ten"),
                                      'unable to set param "msgBacklogThreshold" value "ten"'),
    "pulsar flag not a boolean": (_set("spec.triggers.0.metadata.isPartitionedTopic", "maybe"),
                                  'unable to set param "isPartitionedTopic" value "maybe"'),
    "misspelt pulsar key": (_set("spec.triggers.0.metadata.subscripton", "urabrask-h100"),
                            "Unmatched input property subscripton in scaler pulsar"),
    "unknown trigger type": (_set("spec.triggers.0.type", "pulsr"), 'validates [pulsar] triggers, not "pulsr"'),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_keda_check_fails_a_broken_scaled_object(tools: tuple[Path, Path], rendered: list[Manifest],
                                                 tmp_path: Path, case: str) -> None:
    mutate, message = BROKEN[case]
    docs = copy.deepcopy(rendered)
    mutate(_scaled_objects(docs)["esper-urabrask"])
    result = _keda_check(tools[1], tmp_path, docs)
    assert result.returncode == 1
    assert 'ScaledObject "esper-urabrask"' in result.stderr and message in result.stderr, result.stderr


def test_keda_check_fails_when_no_scaled_object_is_rendered(tools: tuple[Path, Path], tmp_path: Path) -> None:
    docs = _render(tools[0], "autoscaling.enabled=false")
    result = _keda_check(tools[1], tmp_path, docs, expect=1)
    assert result.returncode == 1
    assert "found 0 ScaledObjects, expected at least 1" in result.stderr


def test_deploy_check_fails_a_chart_whose_scaled_object_keda_would_reject(tools: tuple[Path, Path],
                                                                          tmp_path: Path) -> None:
    chart = tmp_path / "esper"
    shutil.copytree(CHART, chart)
    template = chart / "templates" / "scaledobjects.yaml"
    template.write_text(template.read_text().replace("msgBacklogThreshold:", "msgBacklogTreshold:"))
    result = subprocess.run(["bash", str(ROOT / "deploy" / "check.sh")], capture_output=True, text=True,
                            env={**os.environ, "ESPER_CHART_DIR": str(chart)})
    assert result.returncode != 0
    assert "Unmatched input property msgBacklogTreshold in scaler pulsar" in result.stderr
