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


# ---------------------------------------------------------------------------------------------
# Serve: sampling, stop strings, logprobs and real streaming on the vision path


def _image_request(record: dict[str, Any], **fields: Any) -> dict[str, Any]:
    content = [
        {"type": "image_url", "image_url": {"url": _data_uri(Path(record["images"][0]))}},
        {"type": "text", "text": record["messages"][0]["content"]},
    ]
    return {"model": "ad", "messages": [{"role": "user", "content": content}], **fields}


def _first_test_record(cfg_path: Path) -> dict[str, Any]:
    cfg = load_config(cfg_path)
    line = (cfg.data.dir / "test.jsonl").read_text().splitlines()[0]
    record: dict[str, Any] = json.loads(line)
    return record


def _sse_chunks(response: Any) -> list[dict[str, Any]]:
    data = [ln[len("data: ") :] for ln in response.text.splitlines() if ln.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


@pytest.mark.e2e
def test_vision_requests_take_sampling_stop_and_logprobs(vision_run: Path, vision_app: Any) -> None:
    auth = {"Authorization": "Bearer k"}
    record = _first_test_record(vision_run)

    def ask(**fields: Any) -> dict[str, Any]:
        r = vision_app.post(
            "/v1/chat/completions", json=_image_request(record, **fields), headers=auth
        )
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body

    greedy = ask(max_tokens=12)["choices"][0]["message"]["content"]
    assert len(greedy) > 4
    sampled = [ask(max_tokens=12, temperature=1.5, seed=s) for s in (1, 1, 2)]
    texts = [a["choices"][0]["message"]["content"] for a in sampled]
    assert texts[0] == texts[1]  # the seed makes sampling reproducible
    assert len({texts[0], texts[2], greedy}) > 1  # and sampling is applied
    short = ask(max_tokens=3)
    assert short["usage"]["completion_tokens"] == 3 and short["choices"][0]["finish_reason"] == (
        "length"
    )
    stop = greedy[2:4]
    cut = ask(max_tokens=12, stop=[stop])["choices"][0]
    assert cut["message"]["content"] == greedy[: greedy.index(stop)].strip()
    assert cut["finish_reason"] == "stop"
    scored = ask(max_tokens=5, logprobs=True, top_logprobs=2)
    entries = scored["choices"][0]["logprobs"]["content"]
    assert len(entries) == scored["usage"]["completion_tokens"] == 5
    assert all(len(e["top_logprobs"]) == 2 and e["logprob"] <= 0 for e in entries)


@pytest.mark.e2e
def test_vision_streams_token_by_token(vision_run: Path, vision_app: Any) -> None:
    auth = {"Authorization": "Bearer k"}
    record = _first_test_record(vision_run)
    whole = vision_app.post(
        "/v1/chat/completions", json=_image_request(record, max_tokens=12), headers=auth
    ).json()
    body = _image_request(
        record, max_tokens=12, stream=True, stream_options={"include_usage": True}
    )
    chunks = _sse_chunks(vision_app.post("/v1/chat/completions", json=body, headers=auth))
    pieces = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
    text = [p for p in pieces if p]
    assert len(text) > 1  # pieces as they are generated, not one chunk at the end
    assert "".join(text) == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"] == whole["usage"]
    stop = "".join(text)[2:4]
    body = _image_request(record, max_tokens=12, stream=True, stop=[stop])
    chunks = _sse_chunks(vision_app.post("/v1/chat/completions", json=body, headers=auth))
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert stop not in streamed and chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.e2e
def test_vision_refuses_what_it_cannot_honour(vision_run: Path, vision_app: Any) -> None:
    auth = {"Authorization": "Bearer k"}
    record = _first_test_record(vision_run)
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    for field, value in (("tools", [tool]), ("response_format", {"type": "json_object"})):
        body = _image_request(record, **{field: value})
        r = vision_app.post("/v1/chat/completions", json=body, headers=auth)
        assert r.status_code == 400, r.text
        assert r.json()["error"]["param"] == field


def test_streamed_pieces_add_up_to_the_stripped_answer() -> None:
    from mlxtune.vlm.generate import AnswerText

    def decode(tokens: list[int]) -> str:
        return "".join(chr(t) for t in tokens)

    for raw, stops, whole in ((" ab  c \n", [], "ab  c"), (" abXYc", ["XY"], "ab")):
        answer, sent = AnswerText(decode, stops), ""
        for n in range(1, len(raw) + 1):
            answer.update([ord(c) for c in raw[:n]])
            ready = answer.ready()
            assert ready.startswith(sent)
            sent = ready
            if answer.stopped:
                break
        assert answer.final() == whole and whole.startswith(sent)


# ---------------------------------------------------------------------------------------------
# Report, export and the registry for vision runs


@pytest.mark.e2e
def test_report_shows_sample_images_with_base_and_tuned_answers(
    vision_run: Path, tmp_path: Path
) -> None:
    import base64
    import re

    from mlxtune.evaluate import evaluate
    from mlxtune.report import SAMPLE_IMAGES, build_report

    cfg = load_config(vision_run)
    rows = [json.loads(x) for x in evaluate(cfg).predictions_path.read_text().splitlines()]
    result = build_report(cfg, "r", tmp_path / "report")
    page = result.html.read_text()
    thumbs = re.findall(
        r'class="sample" alt="([^"]+)"[^>]*src="data:image/png;base64,([^"]+)"', page
    )
    assert len(thumbs) == min(SAMPLE_IMAGES, len(rows)) == 3
    for (name, b64), row in zip(thumbs, rows, strict=True):
        assert name == Path(row["images"][0]).name
        assert base64.b64decode(b64).startswith(b"\x89PNG")
    from markupsafe import escape  # as jinja2 escapes the page

    for row in rows:  # both answers beside each image
        assert escape(row["base"]) in page and escape(row["adapter"]) in page
    md = result.markdown.read_text()
    assert "## Sample images" in md
    links = re.findall(r"!\[([^\]]+)\]\((samples/[^)]+)\)", md)
    assert [n for n, _ in links] == [Path(r["images"][0]).name for r in rows]
    assert all((result.markdown.parent / ref).is_file() for _, ref in links)
    assert sorted(p.name for p in result.samples) == [
        "sample_1.png",
        "sample_2.png",
        "sample_3.png",
    ]


@pytest.mark.e2e
def test_export_fuses_lora_into_a_model_mlx_vlm_loads_with_the_same_answers(
    vision_run: Path, tmp_path: Path
) -> None:
    import mlx.core as mx
    from mlx_vlm.utils import load as mlx_vlm_load
    from typer.testing import CliRunner

    from mlxtune.cli import app
    from mlxtune.evaluate import load_examples
    from mlxtune.vlm.evaluate import example_images
    from mlxtune.vlm.generate import generate_vlm
    from mlxtune.vlm.load import load_vlm

    cfg = load_config(vision_run)
    out = tmp_path / "fused"
    res = CliRunner().invoke(app, ["export", "r", "--out", str(out), "-c", str(vision_run)])
    assert res.exit_code == 0, res.output
    weights = mx.load(str(out / "model.safetensors"))
    assert not any("lora" in k for k in weights)  # fused: a plain model
    run = cfg.train.runs_dir / "r"
    assert (out / "chat_template.jinja").read_bytes() == (run / "chat_template.jinja").read_bytes()

    tuned, tuned_processor, _ = load_vlm(cfg.model, run)
    fused, fused_processor = mlx_vlm_load(str(out))  # mlx-vlm alone, no adapter
    split = cfg.data.dir / "test.jsonl"
    for ex in load_examples(cfg.data.dir, "test", 3):
        images = example_images(ex, split)
        want = generate_vlm(tuned, tuned_processor, ex.prompt, images, 12)
        got = generate_vlm(fused, fused_processor, ex.prompt, images, 12)
        assert got.tokens == want.tokens

    res = CliRunner().invoke(
        app, ["export", "r", "--out", str(tmp_path / "g"), "--gguf", "-c", str(vision_run)]
    )
    assert res.exit_code == 1
    assert "vision-language model" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "g").exists()


@pytest.mark.e2e
def test_vision_runs_promote_roll_back_and_serve_by_alias(
    vision_run: Path, vision_set: Path
) -> None:
    import sqlite3

    from starlette.testclient import TestClient
    from typer.testing import CliRunner

    from mlxtune.cli import app
    from mlxtune.serve import create_app
    from mlxtune.train import train

    raw = yaml.safe_load(vision_run.read_text())
    runs = Path(raw["train"]["runs_dir"])
    if not (runs / "r2").is_dir():  # a second, different run to promote over the first
        train(load_config(vision_run, overrides=["train.name=r2", "train.learning_rate=0.2"]))
    c = ["-c", str(vision_run)]
    for args in (["runs", "promote", "r", "--as", "vis"], ["runs", "promote", "r2", "--as", "vis"]):
        res = CliRunner().invoke(app, [*args, *c])
        assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["runs", "rollback", "vis", *c])
    assert res.exit_code == 0, res.output

    usage_db = runs / "alias-usage.sqlite"
    overrides = ["serve.adapters={prod: '@vis'}", f"serve.usage_db={usage_db}"]
    cfg = load_config(vision_run, overrides=overrides)
    record = _first_test_record(vision_run)
    body = _image_request(record, model="prod", max_tokens=6)
    with TestClient(create_app(cfg)) as http:
        (served,) = [m for m in http.get("/v1/models").json()["data"] if m["id"] == "prod"]
        assert Path(served["root"]) == runs / "r"  # rolled back from r2 to r
        assert http.post("/v1/chat/completions", json=body).status_code == 200
        http.app.state.serve.usage.flush()
    with sqlite3.connect(usage_db) as db:
        assert db.execute("SELECT model, images, status FROM requests").fetchall() == [
            ("prod", 1, 200)
        ]
