"""Config paths are relative to the config file; secrets never reach artifacts; a bad value is
blamed on where it came from (issue 19)."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import REPO, run_cli
from fake_runs import fabricate_run, project_config
from mlxtune.cli import app
from mlxtune.config import PATH_FIELDS, Config, load_config
from test_data import GOOD

runner = CliRunner()
SECRET = "sk-live-0123456789"
# fields that hold a local path or something else (hub id, run name, @alias)
REF_FIELDS = {("model", "path"), ("evaluate", "adapter"), ("serve", "adapters")}


def test_every_path_field_is_rebased() -> None:
    """A Path field added to config.py must be listed, or -c from elsewhere breaks again."""
    listed = {(s, k) for s, keys in PATH_FIELDS.items() for k in keys} | REF_FIELDS
    for section, field in Config.model_fields.items():
        model = field.annotation
        assert isinstance(model, type)
        for key, sub in model.model_fields.items():
            if "Path" in str(sub.annotation) or typing.get_origin(sub.annotation) is Path:
                assert (section, key) in listed, f"{section}.{key} is a path: list it"


def test_paths_in_a_file_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / "models" / "tiny").mkdir(parents=True)
    (project / "raw.jsonl").write_text("{}\n")
    cfg_file = project / "configs" / "c.yaml"
    cfg_file.parent.mkdir()
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "model": {"path": "../models/tiny"},
                "data": {"dir": "../data"},
                "prepare": {"sources": [{"path": "../raw.jsonl"}, {"path": "org/dataset"}]},
                "train": {"runs_dir": "../runs", "registry_dir": "/abs/registry"},
                "evaluate": {"adapter": "@current", "out_dir": "out"},
                "serve": {"adapters": {"a": "../runs/a", "b": "my-run"}, "usage_db": "u.db"},
            }
        )
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(cfg_file.resolve(), ["train.name=x", "evaluate.out_dir=mine"])
    assert cfg.model.path == str(project / "models" / "tiny")
    assert cfg.data.dir == project / "data"
    assert [s.path for s in cfg.prepare.sources] == [str(project / "raw.jsonl"), "org/dataset"]
    assert cfg.train.runs_dir == project / "runs"
    assert cfg.train.registry_dir == Path("/abs/registry")
    assert cfg.evaluate.adapter == Path("@current")
    assert cfg.evaluate.out_dir == Path("mine")  # --set values stay relative to the cwd
    assert cfg.serve.adapters == {"a": project / "runs" / "a", "b": Path("my-run")}
    assert cfg.serve.usage_db == project / "configs" / "u.db"
    # a relative -c keeps relative paths (normalised): configs/../data -> data
    monkeypatch.chdir(project)
    assert load_config(Path("configs/c.yaml")).data.dir == Path("data")


def test_prepare_with_an_absolute_config_from_another_directory(
    tmp_path: Path, tiny_model: Path
) -> None:
    project = tmp_path / "project"
    (project / "raw").mkdir(parents=True)
    (project / "raw" / "chat.jsonl").write_bytes((GOOD / "chat.jsonl").read_bytes())
    cfg_file = project / "mlxtune.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "model": {"path": str(tiny_model)},
                "data": {"dir": "prepared"},
                "prepare": {
                    "sources": [{"path": "raw/chat.jsonl"}],
                    "valid_ratio": 0.25,
                    "test_ratio": 0.25,
                },
                "train": {"batch_size": 2, "max_seq_length": 128},
            }
        )
    )
    proc = run_cli("prepare", "-c", str(cfg_file), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (project / "prepared" / "train.jsonl").is_file()
    assert run_cli("validate-format", "-c", str(cfg_file), cwd=tmp_path).returncode == 0


def test_a_bad_flag_is_blamed_on_the_flag(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  iters: 10\n")
    res = runner.invoke(app, ["train", "-c", str(cfg_file), "--iters", "0"])
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: --iters: must be > 0, got 0"
    res = runner.invoke(app, ["train", "-c", str(cfg_file), "--set", "train.iters=x"])
    assert res.stderr.strip() == "error: --set train.iters: expected an integer, got 'x'"
    cfg_file.write_text("train:\n  iters: -1\n")
    res = runner.invoke(app, ["config", "validate", "-c", str(cfg_file)])
    assert res.stderr.strip() == f"error: {cfg_file}: train.iters: must be > 0, got -1"


def test_api_key_never_reaches_artifacts(tmp_path: Path) -> None:
    import mlx.nn as nn
    import mlx.optimizers as optim

    from mlxtune.rundir import RunDir
    from mlxtune.train import RunWriter, TrainPlan
    from mlxtune.train.events import TrainStarted

    cfg_file = project_config(tmp_path)
    tree = yaml.safe_load(cfg_file.read_text())
    cfg_file.write_text(yaml.safe_dump({**tree, "serve": {"api_key": SECRET}}))
    cfg = load_config(cfg_file)
    assert cfg.serve.resolved_api_key() == SECRET  # still used where it is needed

    shown = runner.invoke(app, ["config", "show", "-c", str(cfg_file)])
    assert shown.exit_code == 0 and SECRET not in shown.stdout and "<redacted>" in shown.stdout
    other = load_config(cfg_file, ["serve.api_key=another"])
    assert other.fingerprint() == cfg.fingerprint()  # no hash of the secret either

    model = nn.Linear(2, 2)
    optimizer = optim.Adam(learning_rate=1e-3)
    run = RunDir(cfg.train.runs_dir / "written")
    writer = RunWriter(run, cfg, model, optimizer, "{{ template }}")
    plan = TrainPlan("lora", 1, 6, 6, 8, 2, 0, 2, 100, 50, 4, 2.0)
    writer.on_train_started(TrainStarted(run.root, 0, plan))
    assert SECRET not in run.config.read_text()

    # a run written before redaction still holds the key: show and report redact on read
    root = fabricate_run(cfg.train.runs_dir, "old")
    old = yaml.safe_load((root / "config.yaml").read_text())
    old["serve"]["api_key"] = SECRET
    (root / "config.yaml").write_text(yaml.safe_dump(old))
    shown = runner.invoke(app, ["runs", "show", "old", "-c", str(cfg_file), "--json"])
    assert shown.exit_code == 0, shown.output
    assert SECRET not in shown.stdout
    res = runner.invoke(app, ["report", "old", "-c", str(cfg_file), "--out", str(tmp_path / "r")])
    assert res.exit_code == 0, res.output
    assert SECRET not in (tmp_path / "r" / "report.html").read_text()


@pytest.mark.parametrize(
    "config",
    sorted(p for p in (REPO / "configs").glob("*.yaml") if p.name != "mlx-lm-lora.yaml"),
    ids=lambda p: p.name,
)
def test_shipped_config_paths_land_where_the_demos_look(config: Path) -> None:
    """Paths in configs/*.yaml are relative to configs/: a `build/...` written as in the old
    cwd-relative days would put the demo's data and runs under configs/build/."""
    raw = yaml.safe_load(config.read_text())
    cfg = load_config(config)
    written = [
        (f"{section}.{key}", getattr(getattr(cfg, section), key))
        for section, keys in PATH_FIELDS.items()
        for key in keys
        if isinstance(raw.get(section), dict) and isinstance(raw[section].get(key), str)
    ]
    written += [("model.path", cfg.model.path)]
    written += [(f"prepare.sources[{i}].path", s.path) for i, s in enumerate(cfg.prepare.sources)]
    for name, value in written:
        if "://" in str(value) or not str(value).startswith("/"):
            continue  # a URI or hub id
        resolved = Path(value).resolve()
        assert resolved.is_relative_to(REPO), f"{config.name}: {name} -> {resolved}"
        assert not resolved.is_relative_to(REPO / "configs"), f"{config.name}: {name} -> {resolved}"
