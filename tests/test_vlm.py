"""Vision-language models (issue 14): kind detection, the tiny Qwen2-VL, images in prepare and
validate-format, and LoRA training through mlx-vlm into the usual run directory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import DOMAIN_DATA, cli_env, run_cli
from mlxtune.config import load_config
from mlxtune.data.prepare import prepare
from mlxtune.data.validate import validate_format
from mlxtune.errors import BadData, UsageError
from mlxtune.vlm.kind import INSTALL_HINT, detect_kind, model_kind
from mlxtune.vlm.synthetic import QUERY, SCHEMA, make_synthetic_set


@pytest.fixture(scope="session")
def vision_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_set(tmp_path_factory.mktemp("vision") / "set", per_combo=2).root


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory, vision_set: Path) -> Path:
    from mlxtune.tiny_model import build_tiny_model

    out = tmp_path_factory.mktemp("models") / "vlm"
    corpus = [vision_set / "labels" / "shape_000.json", DOMAIN_DATA]
    build_tiny_model(out, preset="vlm", seed=0, corpus=corpus)
    return out


def vision_config(tmp: Path, model: Path, source: Path, **train: object) -> Path:
    cfg = {
        "model": {"path": str(model)},
        "data": {"dir": str(tmp / "prepared")},
        "prepare": {
            "sources": [{"path": str(source), "query": QUERY}],
            "valid_ratio": 0.2,
            "test_ratio": 0.2,
        },
        "train": {"batch_size": 2, "iters": 4, "num_layers": -1, "max_seq_length": 256} | train,
        "evaluate": {"output_schema": SCHEMA},
    }
    path = tmp / "vision.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_kind_from_config_or_setting(tmp_path: Path, tiny_vlm: Path, tiny_model: Path) -> None:
    assert detect_kind(tiny_vlm) == "vlm"
    assert detect_kind(tiny_model) == "text"
    assert detect_kind(tmp_path / "nowhere") == "text"
    forced = load_config(overrides=[f"model.path={tiny_model}", "model.kind=vlm"])
    assert model_kind(forced.model) == "vlm"


def test_vlm_without_the_extra_names_the_install_command(
    tiny_vlm: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from mlxtune.modeling import load_model

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlx_vlm" else real(name, *a)
    )
    cfg = load_config(overrides=[f"model.path={tiny_vlm}"])
    with pytest.raises(UsageError, match=r"needs mlx-vlm: pip install 'mlxtune\[vlm\]'"):
        load_model(cfg.model)
    assert INSTALL_HINT == "pip install 'mlxtune[vlm]'"


def test_text_verbs_never_import_mlx_vlm(tiny_model: Path, domain_data: Path) -> None:
    code = (
        "import sys\n"
        "from mlxtune.config import load_config\n"
        "from mlxtune.data.validate import validate_format\n"
        f"cfg = load_config(overrides=['model.path={tiny_model}', 'data.dir={domain_data}'])\n"
        "assert validate_format(cfg).rows > 0\n"
        "print('mlx_vlm' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=cli_env(), capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == ["False"]


def test_tiny_vlm_has_every_processor_file_and_four_image_tokens(tiny_vlm: Path) -> None:
    from mlxtune.vlm.load import load_vlm
    from mlxtune.vlm.train import encode_images, image_token_counts

    for name in ("preprocessor_config.json", "video_preprocessor_config.json", "tokenizer.json"):
        assert (tiny_vlm / name).is_file(), name  # a missing one makes mlx-vlm try the hub
    config = json.loads((tiny_vlm / "config.json").read_text())
    assert isinstance(config["vision_config"]["mlp_ratio"], int)  # transformers checks types
    cfg = load_config(overrides=[f"model.path={tiny_vlm}"])
    _, processor, _ = load_vlm(cfg.model)
    set_root = make_synthetic_set(Path(processor.tokenizer.name_or_path).parent / "s", per_combo=1)
    _, grid = encode_images(processor, [set_root.root / "images" / "shape_000.png"])
    assert image_token_counts(processor, grid) == [4]


def test_prepare_from_sqlite_links_checks_and_splits_by_image(
    tmp_path: Path, tiny_vlm: Path, vision_set: Path
) -> None:
    cfg = load_config(vision_config(tmp_path, tiny_vlm, vision_set / "jobs.sqlite"))
    prepare(cfg)
    out = tmp_path / "prepared"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["images"]["linked"] == 36 and manifest["images"]["unique"] == 36
    assert manifest["images"]["missing"] == manifest["images"]["invalid"] == 0
    assert manifest["images"]["sizes"] == ["64x64"]
    seen: dict[str, str] = {}
    for split in ("train", "valid", "test"):
        for line in (out / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            (image,) = row["images"]
            assert Path(image).is_absolute() and Path(image).is_file()
            assert seen.setdefault(image, split) == split
    assert len(seen) == 36  # same question, different images: none deduplicated away
    assert validate_format(cfg).ok


def test_missing_and_corrupt_images_are_reported_at_their_row(
    tmp_path: Path, tiny_vlm: Path, vision_set: Path
) -> None:
    bad = tmp_path / "set"
    shutil.copytree(vision_set, bad)
    (bad / "images" / "shape_003.png").unlink()
    (bad / "images" / "shape_005.png").write_bytes(b"not a png")
    cfg = load_config(vision_config(tmp_path, tiny_vlm, bad / "jobs.sqlite"))
    with pytest.raises(BadData) as err:
        prepare(cfg)
    lines = str(err.value).splitlines()
    assert (
        lines[0] == f"{bad}/jobs.sqlite:4: images[0]: {bad}/images/shape_003.png: image not found"
    )
    assert lines[1].startswith(
        f"{bad}/jobs.sqlite:6: images[0]: {bad}/images/shape_005.png: cannot read image"
    )
    assert len(lines) == 2 and not (tmp_path / "prepared").exists()


def test_validate_format_checks_images_and_answers_against_the_schema(
    tmp_path: Path, tiny_vlm: Path, vision_set: Path
) -> None:
    data = tmp_path / "prepared"
    data.mkdir()
    good = '{"shape":"circle","color":"red","size":"small"}'
    rows = [
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image", "image": str(image)},
                        {"type": "text", "text": "Describe it."},
                    ],
                },
                {"role": "assistant", "content": answer},
            ]
        }
        for image, answer in [
            (vision_set / "images" / "shape_000.png", good),
            (vision_set / "images" / "shape_001.png", '{"shape":"hexagon","color":"red"}'),
            (tmp_path / "gone.png", good),
        ]
    ]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(vision_config(tmp_path, tiny_vlm, vision_set / "jobs.sqlite", batch_size=1))
    result = validate_format(cfg, [data / "train.jsonl"])
    found = {(p.line, p.field, p.check) for p in result.problems}
    assert found == {(2, "messages[1].content", "output_schema"), (3, "images[0]", "image")}
    (missing,) = [p for p in result.problems if p.check == "image"]
    assert missing.message == f"{tmp_path}/gone.png: image not found"


@pytest.mark.e2e
def test_lora_training_writes_the_usual_run_and_freezes_the_vision_tower(
    tmp_path: Path, tiny_vlm: Path, vision_set: Path
) -> None:
    cfg_path = vision_config(
        tmp_path,
        tiny_vlm,
        vision_set / "jobs.sqlite",
        steps_per_eval=2,
        save_every=2,
        learning_rate=1e-3,
        steps_per_report=2,
    )
    prepare(load_config(cfg_path))
    runs = tmp_path / "runs"
    result = run_cli(
        "train",
        "-c",
        str(cfg_path),
        "--set",
        f"train.runs_dir={runs}",
        "--set",
        "train.name=r",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    run = runs / "r"
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and info["final"]["steps"] == 4
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "val_loss" in m] == [2, 4]
    assert (run / "best" / "adapters.safetensors").is_file()
    assert (run / "checkpoints" / "step_0000004" / "state.json").is_file()

    import mlx.core as mx

    weights = mx.load(str(run / "adapters.safetensors"))
    assert weights and all(k.startswith("language_model.") for k in weights)
    assert all("lora_" in k for k in weights)

    from mlxtune.vlm.load import load_vlm

    cfg = load_config(cfg_path)
    model, _, _ = load_vlm(cfg.model, run)  # mlx-vlm's layers take our adapter as saved
    loaded = dict(mx.load(str(run / "adapters.safetensors")))
    from mlx.utils import tree_flatten

    params = dict(tree_flatten(model.parameters()))
    assert all(mx.array_equal(params[k], v).item() for k, v in loaded.items())


# ---------------------------------------------------------------------------------------------
# Evaluate and serve: one generation function, so the served answer is evaluate's


@pytest.fixture(scope="module")
def vision_run(tmp_path_factory: pytest.TempPathFactory, tiny_vlm: Path, vision_set: Path) -> Path:
    """A prepared set and a 2-step LoRA run (in process); returns the config path."""
    from mlxtune.train import train

    tmp = tmp_path_factory.mktemp("vision-run")
    cfg_path = vision_config(
        tmp, tiny_vlm, vision_set / "jobs.sqlite", iters=2, learning_rate=5e-2, steps_per_eval=2
    )
    raw = yaml.safe_load(cfg_path.read_text())
    raw["train"] |= {"runs_dir": str(tmp / "runs"), "name": "r", "registry_dir": str(tmp / "reg")}
    raw["evaluate"] |= {"max_examples": 3, "max_tokens": 8}
    cfg_path.write_text(yaml.safe_dump(raw))
    cfg = load_config(cfg_path)
    prepare(cfg)
    train(cfg)
    return cfg_path


@pytest.mark.e2e
def test_vlm_dry_run_plan_says_rank_and_scale_as_text_plans_do(vision_run: Path) -> None:
    from mlxtune.train import train

    cfg = load_config(vision_run)
    result = train(cfg, dry_run=True)
    assert result.dry_run and result.plan is not None
    assert result.plan.method == "lora"
    assert (result.plan.lora or "").startswith(f"rank {cfg.train.lora_rank}, scale ")
    assert result.plan.steps == cfg.train.iters and result.plan.batches_per_epoch > 0


@pytest.mark.e2e
def test_evaluate_scores_a_vlm_adapter_beside_its_base(vision_run: Path) -> None:
    from mlxtune.evaluate import evaluate

    cfg = load_config(vision_run, overrides=["evaluate.min={format_compliance: 0.95}"])
    result = evaluate(cfg)
    report = result.report.to_dict()
    assert report["n_examples"] == 3
    for side in ("base", "adapter"):  # scored against evaluate.output_schema, as for text
        assert report["overall"][side]["format_compliance"] is not None
        assert report["overall"][side]["field_exact_match"] is not None
    (gate,) = report["thresholds"]
    assert gate["metric"] == "format_compliance" and gate["actual"] < 0.95  # 2 steps: not yet
    assert not result.passed
    rows = [json.loads(x) for x in result.predictions_path.read_text().splitlines()]
    assert all(isinstance(r["base"], str) and isinstance(r["adapter"], str) for r in rows)
    cfg = load_config(vision_run)
    test_ids = [json.loads(x)["id"] for x in (cfg.data.dir / "test.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == test_ids[:3]
    assert any(r["base"] != r["adapter"] for r in rows)  # the adapter is applied

    from typer.testing import CliRunner

    from mlxtune.cli import app

    c = ["-c", str(vision_run)]
    res = CliRunner().invoke(app, ["runs", "promote", "r", *c])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["runs", "list", *c, "--json"])
    assert res.exit_code == 0, res.output
    (listed,) = json.loads(res.output)
    assert listed["name"] == "r" and "current" in listed["aliases"]
    res = CliRunner().invoke(app, ["runs", "list", *c])  # no keywords: token F1 shown instead
    assert res.exit_code == 0 and " f1" in res.output, res.output


def _data_uri(path: Path) -> str:
    import base64

    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def vision_app(vision_run: Path) -> Any:
    from starlette.testclient import TestClient

    from mlxtune.serve import create_app

    cfg = load_config(vision_run, overrides=["serve.adapters={ad: r}", "serve.api_key=k"])
    with TestClient(create_app(cfg)) as http:
        yield http


@pytest.mark.e2e
def test_served_image_answer_equals_evaluates(vision_run: Path, vision_app: Any) -> None:
    import openai

    from mlxtune.evaluate import evaluate

    cfg = load_config(vision_run, overrides=["evaluate.compare_base=false"])
    row = json.loads(evaluate(cfg).predictions_path.read_text().splitlines()[0])
    record = json.loads((cfg.data.dir / "test.jsonl").read_text().splitlines()[0])
    client = openai.OpenAI(
        base_url="http://testserver/v1", api_key="k", http_client=vision_app, max_retries=0
    )
    question = record["messages"][0]["content"]
    content = [
        {"type": "image_url", "image_url": {"url": _data_uri(Path(record["images"][0]))}},
        {"type": "text", "text": question},
    ]
    messages: Any = [{"role": "user", "content": content}]
    served = client.chat.completions.create(
        model="ad", messages=messages, max_tokens=8, temperature=0
    )
    assert served.choices[0].message.content == row["adapter"]
    assert served.usage is not None and served.usage.prompt_tokens > 4  # 4 image tokens + text
    stream = client.chat.completions.create(
        model="ad", messages=messages, max_tokens=8, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == row["adapter"]
    usage_db = load_config(vision_run).train.runs_dir / "r" / "usage.sqlite"
    import sqlite3

    vision_app.app.state.serve.usage.flush()
    with sqlite3.connect(usage_db) as db:
        logged = db.execute("SELECT model, images, status FROM requests").fetchall()
    assert logged[-2:] == [("ad", 1, 200), ("ad", 1, 200)]


@pytest.mark.e2e
def test_remote_urls_and_paths_are_refused(vision_app: Any, vision_set: Path) -> None:
    auth = {"Authorization": "Bearer k"}
    for url in ("https://example.com/a.png", str(vision_set / "images" / "shape_000.png")):
        body = {
            "messages": [
                {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}
            ]
        }
        r = vision_app.post("/v1/chat/completions", json=body, headers=auth)
        assert r.status_code == 400
        error = r.json()["error"]
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_image_url"
        assert error["param"] == "messages.image_url[0]"


@pytest.mark.e2e
def test_an_image_to_a_text_model_is_a_400(tiny_model: Path, vision_set: Path) -> None:
    from starlette.testclient import TestClient

    from mlxtune.serve import create_app

    cfg = load_config(overrides=[f"model.path={tiny_model}", f"serve.usage_db={vision_set}/u.db"])
    image = {
        "type": "image_url",
        "image_url": {"url": _data_uri(vision_set / "images" / "shape_000.png")},
    }
    body = {"messages": [{"role": "user", "content": [image, {"type": "text", "text": "hi"}]}]}
    with TestClient(create_app(cfg)) as http:
        r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "images_not_supported"
