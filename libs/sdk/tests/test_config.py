"""load_config: one YAML per run, unknown keys named by their path, clear errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from esper import ConfigError, EsperConfig, load_config, parse_config

CONFIGS = Path(__file__).resolve().parents[3] / "recipes" / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


def test_sections_and_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, """
tolaria:
  epochs: 12
  learning_rate: 0.01
kasmina:
  chunks_per_layer: 2
  exclude_modules: [head]
tamiyo:
  plateau_patience_epochs: 4
"""))
    assert isinstance(config, EsperConfig)
    assert config.tolaria.epochs == 12 and config.tolaria.learning_rate == 0.01
    assert config.kasmina.chunks_per_layer == 2 and config.kasmina.exclude_modules == ["head"]
    assert config.tamiyo.plateau_patience_epochs == 4 and config.tamiyo.policy == "heuristic"
    assert config.tolaria.optimizer == "adam"  # untouched keys keep their defaults


def test_empty_file_gives_all_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == EsperConfig()


@pytest.mark.parametrize(("text", "path"), [
    ("tolaria:\n  lerning_rate: 0.1\n", "tolaria.lerning_rate"),
    ("kasmina:\n  chunks_per_layr: 2\n", "kasmina.chunks_per_layr"),
    ("tamiyo:\n  patience: 3\n", "tamiyo.patience"),
    ("tamiya:\n  policy: random\n", "tamiya"),
])
def test_unknown_key_is_an_error_naming_its_path(tmp_path: Path, text: str, path: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert f"{path}: unknown key" in str(err.value)
    assert "run.yaml" in str(err.value)


def test_bad_value_names_path_and_value(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"tolaria\.epochs: .*got 0"):
        load_config(write(tmp_path, "tolaria:\n  epochs: 0\n"))
    with pytest.raises(ConfigError, match=r"tamiyo\.policy"):
        load_config(write(tmp_path, "tamiyo:\n  policy: clever\n"))


def test_missing_file_and_bad_yaml_and_wrong_shape(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match=r"not valid YAML at line 2"):
        load_config(write(tmp_path, "tolaria:\n\tepochs: 3\n"))
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, "- tolaria\n- kasmina\n"))


@pytest.mark.parametrize("name", ["demo-digits.yaml", "demo-spirals.yaml"])
def test_shipped_demo_configs_load(name: str) -> None:
    config = load_config(CONFIGS / name)
    assert config.tamiyo.policy == "heuristic"


DEPLOY = Path(__file__).resolve().parents[3] / "deploy"


@pytest.mark.parametrize("source", ["compose", "helm"])
def test_the_trainer_run_configs_the_deployments_ship_are_valid(source: str) -> None:
    import yaml

    if source == "compose":
        data = yaml.safe_load((DEPLOY / "compose" / "trainer-spirals.yaml").read_text())
    else:
        data = yaml.safe_load((DEPLOY / "helm" / "esper" / "values.yaml").read_text())["trainer"]["config"]
    config = parse_config(data, source)
    assert config.tolaria.task == "spirals"  # the task the trainer image can build without scikit-learn
