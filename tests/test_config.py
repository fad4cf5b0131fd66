from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from mlxtune.cli import app
from mlxtune.config import Config, json_schema, load_config, starter_yaml
from mlxtune.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
runner = CliRunner()


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(text)
    return p


def test_precedence_defaults_file_set_flags(tmp_path: Path) -> None:
    cfg_file = write(tmp_path, "train:\n  iters: 50\n  batch_size: 2\n  learning_rate: 1e-4\n")
    cfg = load_config(
        cfg_file,
        ["train.batch_size=3", "train.learning_rate=2e-4"],
        {"train.learning_rate": 3e-4, "train.seed": None},
    )
    assert cfg.train.iters == 50  # file beats default
    assert cfg.train.batch_size == 3  # --set beats file
    assert cfg.train.learning_rate == 3e-4  # flag beats --set
    assert cfg.train.seed == 0  # a flag left as None does not override


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    cfg_file = write(
        tmp_path,
        "train:\n  learning_rat: 1\n  iters: abc\n  batch_size: 0\n  method: qlora\nmodle: {}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file)
    problems = info.value.problems
    assert "train.learning_rat: unknown key, did you mean learning_rate?" in problems
    assert "train.iters: expected an integer, got 'abc'" in problems
    assert "train.batch_size: must be > 0, got 0" in problems
    assert any(p.startswith("train.method: expected one of") for p in problems)
    assert "modle: unknown key, did you mean model?" in problems
    assert len(problems) == 5


def test_cross_field_rules(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="valid_ratio \\+ test_ratio"):
        load_config(None, ["prepare.valid_ratio=0.6", "prepare.test_ratio=0.5"])
    with pytest.raises(ConfigError, match="lora_alpha or lora_scale"):
        load_config(None, ["train.lora_alpha=16", "train.lora_scale=2"])
    cfg = load_config(None, ["train.lora_alpha=32", "train.lora_rank=16"])
    assert cfg.train.effective_lora_scale == 2.0


def test_set_values_are_yaml(tmp_path: Path) -> None:
    cfg = load_config(None, ["evaluate.min={keyword_accuracy: 0.8}", "serve.port=9000"])
    assert cfg.evaluate.min == {"keyword_accuracy": 0.8}
    assert cfg.serve.port == 9000
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        load_config(None, ["iters"])


def test_bad_yaml_names_file_and_line(tmp_path: Path) -> None:
    cfg_file = write(tmp_path, "train:\n  iters: [1, 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(cfg_file)
    assert f"{cfg_file}:" in str(info.value)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_validate(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_starter_config_round_trips_and_is_commented() -> None:
    text = starter_yaml("my/model")
    assert text.startswith("# yaml-language-server: $schema=")
    assert "  # Peak learning rate." in text
    cfg = Config.model_validate(yaml.safe_load(text))
    assert cfg.model.path == "my/model"
    assert cfg.train == Config().train


def test_schema_describes_every_field() -> None:
    schema = json_schema()
    train = schema["$defs"]["TrainConfig"]["properties"]
    assert train["learning_rate"]["description"]
    missing = [
        f"{name}.{key}"
        for name, section in schema["$defs"].items()
        for key, prop in section.get("properties", {}).items()
        if not prop.get("description")
    ]
    assert missing == []


def test_cli_config_show_and_exit_codes(tmp_path: Path) -> None:
    cfg_file = write(tmp_path, "train:\n  iters: 7\n")
    result = runner.invoke(app, ["config", "show", "-c", str(cfg_file), "--set", "train.seed=3"])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["train"]["iters"] == 7 and shown["train"]["seed"] == 3
    bad = write(tmp_path, "train:\n  iters: abc\n")
    result = runner.invoke(app, ["config", "show", "-c", str(bad)])
    assert result.exit_code == 2
    assert "train.iters: expected an integer, got 'abc'" in result.output
    assert "Traceback" not in result.output


def test_cli_config_init_writes_and_refuses_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "new.yaml"
    assert runner.invoke(app, ["config", "init", str(out)]).exit_code == 0
    load_config(out)
    again = runner.invoke(app, ["config", "init", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_shipped_schema_is_current() -> None:
    """configs/*.yaml point editors at docs/config.schema.json: `make docs` keeps it current."""
    import json

    shipped = json.loads((REPO / "docs" / "config.schema.json").read_text())
    assert shipped == json_schema(), "run `make docs` to regenerate docs/config.schema.json"


def test_serve_default_max_tokens_must_fit_the_cap() -> None:
    with pytest.raises(ConfigError, match=r"default_max_tokens .* exceeds max_tokens_cap"):
        load_config(None, ["serve.default_max_tokens=64", "serve.max_tokens_cap=32"])
