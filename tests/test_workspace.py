"""The workspace keeps its shape: one distribution per folder, lean service images, enforced boundaries."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SERVICES = sorted(p for p in (ROOT / "services").iterdir() if p.is_dir())
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _closure(package: str) -> set[str]:
    """Names of every package ``package`` needs at run time (no dev groups), read from uv.lock."""
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    deps = {p["name"]: [d["name"] for d in p.get("dependencies", [])] for p in lock["package"]}
    seen: set[str] = set()
    todo = [package]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(deps.get(name, []))
    return seen


@pytest.mark.parametrize("service", SERVICES, ids=lambda p: p.name)
def test_service_folder_has_code_tests_dockerfile_readme(service: Path) -> None:
    meta = tomllib.loads((service / "pyproject.toml").read_text())["project"]
    module = "esper_" + service.name.replace("-", "_")
    assert meta["name"] == f"esper-{service.name}"
    assert (service / module / "__init__.py").exists()
    assert (service / "tests").is_dir()
    assert (service / "README.md").exists()
    dockerfile = (service / "Dockerfile").read_text()
    assert f"--package esper-{service.name}" in dockerfile
    if service.name == "narset-worker":  # lives in the trainer process: its image is the trainer's base
        assert '"esper.demo"' in dockerfile
    else:
        assert f'"serve", "{service.name}"' in dockerfile


def test_urza_and_contracts_do_not_pull_torch() -> None:
    assert "torch" not in _closure("esper-urza")
    assert "torch" not in _closure("esper-tamiyo")
    assert _closure("esper-contracts") <= {"esper-contracts", "pydantic", "pydantic-core", "annotated-types",
                                           "typing-extensions", "typing-inspection"}
    assert "torch" in _closure("esper-sdk")  # the researcher SDK is where torch belongs


def test_import_boundaries_hold() -> None:
    result = subprocess.run([str(LINT_IMPORTS)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_boundary_check_catches_a_service_importing_another(tmp_path: Path) -> None:
    for name, body in {"svc_a": "import svc_b.internals\n", "svc_b": ""}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "__init__.py").write_text(body)
    (tmp_path / "svc_b" / "internals.py").write_text("VALUE = 1\n")
    (tmp_path / ".importlinter").write_text(
        "[importlinter]\nroot_packages =\n    svc_a\n    svc_b\n\n"
        "[importlinter:contract:independent]\nname = services are independent\ntype = independence\n"
        "modules =\n    svc_a\n    svc_b\n"
    )
    result = subprocess.run([str(LINT_IMPORTS), "--config", ".importlinter"], cwd=tmp_path,
                            capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin"})
    assert result.returncode == 1
    assert "BROKEN" in result.stdout and "svc_a -> svc_b" in result.stdout
