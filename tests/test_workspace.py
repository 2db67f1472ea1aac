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
        assert 'CMD ["esper", "train", "/app/configs/demo-spirals.yaml", "--kernels", "eager"]' in dockerfile
        assert "esper_recipes" not in dockerfile
    else:
        assert f'"serve", "{service.name}"' in dockerfile


#: The demo, proof and report stack: only the recipes may pull it.
RECIPE_ONLY = {"scikit-learn", "scipy", "matplotlib"}
#: What each image installs (``uv sync --package``): the trainer image is narset-worker's (SDK included).
TRAINER_IMAGE = "esper-narset-worker"


@pytest.mark.parametrize("package", ["esper-tezzeret", "esper-urabrask", TRAINER_IMAGE, "esper-sdk", "esper-kernels"])
def test_kernel_images_carry_no_demo_stack(package: str) -> None:
    assert not _closure(package) & RECIPE_ONLY, f"{package} pulls {sorted(_closure(package) & RECIPE_ONLY)}"


def test_recipes_are_where_the_demo_stack_lives() -> None:
    assert _closure("esper-recipes") >= RECIPE_ONLY


@pytest.mark.parametrize("package", ["esper-urza", "esper-tamiyo", "esper-karn", "esper-emrakul", "esper-nissa",
                                     "esper-urza-client", "esper-policy"])
def test_torch_free_services_do_not_pull_torch(package: str) -> None:
    assert "torch" not in _closure(package)


@pytest.mark.parametrize("service", SERVICES, ids=lambda p: p.name)
def test_no_image_ships_the_development_tools(service: Path) -> None:
    # Each image installs its service's closure (the trainer image is narset-worker's): none holds esper-devtools.
    assert "esper-devtools" not in _closure(f"esper-{service.name}")


def test_development_tools_are_a_workspace_member_that_make_dev_installs() -> None:
    assert "esper-devtools" in {p["name"] for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}
    assert "esper-devtools" not in _closure("esper-runtime")
    assert "--all-packages" in (ROOT / "Makefile").read_text()  # `make dev` syncs every member, devtools too


def test_contracts_depend_on_pydantic_alone() -> None:
    assert _closure("esper-contracts") <= {"esper-contracts", "pydantic", "pydantic-core", "annotated-types",
                                           "typing-extensions", "typing-inspection"}
    assert "torch" in _closure("esper-sdk")  # the researcher SDK and the kernel library are where torch belongs
    assert "torch" in _closure("esper-kernels")


def test_import_esper_pulls_no_demo_stack() -> None:
    probe = "import sys, esper; print(sorted(m for m in ('sklearn', 'scipy', 'matplotlib') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


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
