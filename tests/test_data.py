"""prepare and validate-format on every input format and every broken fixture."""

from __future__ import annotations

import csv
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from conftest import DOMAIN_DATA, run_cli
from mlxtune.cli import app
from mlxtune.config import load_config
from mlxtune.data.prepare import prepare
from mlxtune.data.validate import validate_format
from mlxtune.io import sha256_file

FIXTURES = Path(__file__).parent / "fixtures" / "data"
GOOD = FIXTURES / "good"
BROKEN = FIXTURES / "broken"
runner = CliRunner()


def write_config(
    tmp_path: Path, model: Path, sources: list[dict[str, Any]], **prepare_kw: Any
) -> Path:
    cfg = {
        "model": {"path": str(model)},
        "data": {"dir": str(tmp_path / "prepared")},
        "prepare": {"sources": sources, "valid_ratio": 0.25, "test_ratio": 0.25, **prepare_kw},
        "train": {"batch_size": 2, "max_seq_length": 128},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli(*args: str) -> Any:
    return runner.invoke(app, list(args))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------------------------------------
# Every input format


def _parquet(tmp_path: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = read_jsonl(GOOD / "chat.jsonl")
    path = tmp_path / "chat.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "jobs.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE jobs (q TEXT, a TEXT, kind TEXT, status TEXT)")
    for row in read_jsonl(GOOD / "alpaca.jsonl"):
        con.execute(
            "INSERT INTO jobs VALUES (?, ?, ?, 'done')",
            (row["instruction"], row["output"], row["category"]),
        )
    con.execute("INSERT INTO jobs VALUES ('skip me', 'x', 'n', 'failed')")
    con.commit()
    con.close()
    return path


def _hf_dir(tmp_path: Path) -> Path:
    import datasets

    path = tmp_path / "hf"
    datasets.Dataset.from_list(read_jsonl(GOOD / "completions.jsonl")).save_to_disk(str(path))
    return path


SOURCES = {
    "chat": lambda t: {"path": str(GOOD / "chat.jsonl")},
    "alpaca": lambda t: {"path": str(GOOD / "alpaca.jsonl")},
    "sharegpt": lambda t: {"path": str(GOOD / "sharegpt.jsonl")},
    "completions": lambda t: {"path": str(GOOD / "completions.jsonl")},
    "text": lambda t: {"path": str(GOOD / "text.jsonl")},
    "json": lambda t: {"path": str(GOOD / "multiturn.json")},
    "csv": lambda t: {
        "path": str(GOOD / "qa.csv"),
        "columns": {"instruction": "question", "output": "answer", "category": "topic"},
    },
    "parquet": lambda t: {"path": str(_parquet(t))},
    "sqlite": lambda t: {
        "path": str(_sqlite(t)),
        "query": "SELECT q AS instruction, a AS output, kind AS category "
        "FROM jobs WHERE status = 'done'",
    },
    "hf": lambda t: {"path": str(_hf_dir(t))},
}


@pytest.mark.parametrize("kind", list(SOURCES))
def test_prepare_then_validate_every_source(kind: str, tmp_path: Path, tiny_model: Path) -> None:
    cfg_path = write_config(tmp_path, tiny_model, [SOURCES[kind](tmp_path)])
    res = cli("prepare", "-c", str(cfg_path))
    assert res.exit_code == 0, res.output
    out = tmp_path / "prepared"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"read": 8, "written": 8}
    assert sum(manifest["splits"].values()) == 8 and manifest["splits"]["valid"] == 2
    train = read_jsonl(out / "train.jsonl")
    assert len(train) == manifest["splits"]["train"] > 0
    key = "text" if kind == "text" else "messages"
    assert all(key in r for r in train)
    if kind in ("csv", "sqlite", "chat", "alpaca"):
        # stratified: every category reaches train
        assert {r["category"] for r in train} == {"networking", "storage", "training"}
    if kind == "csv":
        # the keywords column becomes a list: "8080" -> ["8080"]
        with (GOOD / "qa.csv").open(newline="") as f:
            want = {row["question"]: [row["keywords"]] for row in csv.DictReader(f)}
        for r in train:
            assert r["keywords"] == want[r["messages"][0]["content"]]
    res = cli("validate-format", "-c", str(cfg_path))
    assert res.exit_code == 0, res.output
    assert "ok 8 rows" in res.output


# ---------------------------------------------------------------------------------------------
# Broken fixtures: both commands, exact file:line, message and exit code


def _both(tmp_path: Path, model: Path, name: str) -> tuple[Any, Any, Path]:
    path = BROKEN / name
    cfg_path = write_config(tmp_path, model, [{"path": str(path)}])
    return (
        cli("prepare", "-c", str(cfg_path)),
        cli("validate-format", "-c", str(cfg_path), str(path)),
        path,
    )


def test_bad_json(tmp_path: Path, tiny_model: Path) -> None:
    prep, val, path = _both(tmp_path, tiny_model, "bad_json.jsonl")
    line = f"{path}:3: json: invalid JSON at column 57: Invalid control character"
    assert prep.exit_code == 1 and f"error: {line}" in prep.stderr
    assert not (tmp_path / "prepared").exists()  # nothing half-written
    assert val.exit_code == 1 and line in val.stdout
    assert "1 problem(s)" in val.stdout


def test_wrong_roles(tmp_path: Path, tiny_model: Path) -> None:
    prep, val, path = _both(tmp_path, tiny_model, "wrong_roles.jsonl")
    lines = [
        f"{path}:2: messages[1].role: 'bot' is not one of 'system', 'user', 'assistant'",
        f"{path}:4: messages[0].role: 'assistant', expected 'user'",
    ]
    assert prep.exit_code == 1
    assert val.exit_code == 1
    for line in lines:
        assert line in prep.stderr
        assert line in val.stdout


def test_empty_answer(tmp_path: Path, tiny_model: Path) -> None:
    prep, val, path = _both(tmp_path, tiny_model, "empty_answer.jsonl")
    # prepare drops empty turns, counted and named in the manifest
    assert prep.exit_code == 0, prep.output
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    empty = manifest["filters"][0]
    assert (empty["name"], empty["dropped"], empty["examples"]) == ("empty_turns", 1, [f"{path}:3"])
    assert manifest["counts"]["written"] == 4
    assert val.exit_code == 1
    assert f"{path}:3: messages[1].content: empty assistant turn" in val.stdout


def test_mixed_formats(tmp_path: Path, tiny_model: Path) -> None:
    prep, val, path = _both(tmp_path, tiny_model, "mixed_formats.jsonl")
    line = (
        f"{path}:4: format: mixed formats (5 chat, 1 alpaca); "
        "this is the first alpaca row, the rest are chat"
    )
    assert prep.exit_code == 1 and line in prep.stderr
    assert val.exit_code == 1 and line in val.stdout


def test_overlong(tmp_path: Path, tiny_model: Path) -> None:
    prep, val, path = _both(tmp_path, tiny_model, "overlong.jsonl")
    assert prep.exit_code == 0, prep.output
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    long = next(f for f in manifest["filters"] if f["name"] == "max_seq_length")
    assert (long["dropped"], long["examples"]) == (1, [f"{path}:2"])
    assert manifest["token_lengths"]["all"]["max"] <= 128
    assert val.exit_code == 1
    assert f"{path}:2: tokens: 530 tokens > train.max_seq_length 128" in val.stdout


def test_leakage(tmp_path: Path, tiny_model: Path) -> None:
    d = BROKEN / "leakage"
    cfg_path = write_config(
        tmp_path, tiny_model, [{"path": str(d / f"{s}.jsonl")} for s in ("train", "valid", "test")]
    )
    val = cli("validate-format", "-c", str(cfg_path), str(d), "--json")
    assert val.exit_code == 1
    report = json.loads(val.stdout)
    assert [p["text"] for p in report["problems"]] == [
        f"{d}/valid.jsonl:2: leakage: same question as {d}/train.jsonl:3 (train)",
        f"{d}/test.jsonl:1: leakage: same question after normalisation as "
        f"{d}/train.jsonl:1 (train)",
    ]
    assert report["problem_counts"] == {"leakage": 2}
    # prepare removes both as duplicates, and its output has no leakage
    prep = cli("prepare", "-c", str(cfg_path))
    assert prep.exit_code == 0, prep.output
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    dropped = {f["name"]: f["dropped"] for f in manifest["filters"]}
    assert dropped["duplicates_exact"] == 1 and dropped["duplicates_normalized"] == 1
    assert manifest["counts"]["written"] == 8
    assert cli("validate-format", "-c", str(cfg_path)).exit_code == 0


def test_usage_errors_exit_2(tmp_path: Path, tiny_model: Path) -> None:
    cfg_path = write_config(tmp_path, tiny_model, [{"path": str(GOOD / "chat.jsonl")}])
    res = cli("validate-format", "-c", str(cfg_path), str(tmp_path / "nope.jsonl"))
    assert res.exit_code == 2 and f"{tmp_path}/nope.jsonl: no such file or directory" in res.stderr
    res = cli("validate-format", "-c", str(cfg_path))  # nothing prepared yet
    assert res.exit_code == 2 and "run mlxtune prepare" in res.stderr
    res = cli("prepare", "-c", str(cfg_path), "--set", "model.path=" + str(tmp_path / "missing"))
    assert res.exit_code == 2 and "model.path" in res.stderr
    res = cli("prepare", "-c", str(cfg_path), "--set", "prepare.sources=[{path: x.unknown}]")
    assert res.exit_code == 2 and "set type:" in res.stderr


def test_batch_size_and_show(tmp_path: Path, tiny_model: Path) -> None:
    cfg_path = write_config(tmp_path, tiny_model, [{"path": str(GOOD / "chat.jsonl")}])
    assert cli("prepare", "-c", str(cfg_path)).exit_code == 0
    res = cli("prepare", "-c", str(cfg_path), "--force", "--set", "train.batch_size=8")
    assert "warning: valid.jsonl: 2 rows < train.batch_size 8" in res.stderr
    res = cli("validate-format", "-c", str(cfg_path), "--set", "train.batch_size=8", "--show", "1")
    assert res.exit_code == 1
    out = tmp_path / "prepared"
    assert f"{out}/valid.jsonl: rows: 2 rows < train.batch_size 8" in res.stdout
    # the preview shows train.jsonl:1 and marks the trained answer (no colour in a pipe):
    # exactly that row's answer and end-of-turn are inside «»
    answer = read_jsonl(out / "train.jsonl")[0]["messages"][-1]["content"]
    trained = res.stdout.split("«", 1)[1].split("»", 1)[0]
    assert trained == f"{answer}<|im_end|>\n"


def test_refuses_to_overwrite_without_force(tmp_path: Path, tiny_model: Path) -> None:
    cfg_path = write_config(tmp_path, tiny_model, [{"path": str(GOOD / "chat.jsonl")}])
    assert cli("prepare", "-c", str(cfg_path)).exit_code == 0
    before = (tmp_path / "prepared" / "train.jsonl").read_text()
    res = cli("prepare", "-c", str(cfg_path), "--set", "prepare.seed=1")
    assert res.exit_code == 2 and "use --force" in res.stderr
    assert (tmp_path / "prepared" / "train.jsonl").read_text() == before
    other = tmp_path / "elsewhere"
    assert cli("prepare", "-c", str(cfg_path), "--out", str(other)).exit_code == 0
    assert cli("prepare", "-c", str(cfg_path), "--force", "--set", "prepare.seed=1").exit_code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


# ---------------------------------------------------------------------------------------------
# The shipped dataset


def test_domain_dataset_split_by_question_and_by_fact(tmp_path: Path, tiny_model: Path) -> None:
    cfg = load_config(
        write_config(
            tmp_path, tiny_model, [{"path": str(DOMAIN_DATA)}], valid_ratio=0.1, test_ratio=0.15
        ),
        ["train.max_seq_length=256", "train.batch_size=8"],
    )
    result = prepare(cfg)
    m = result.manifest
    shipped = read_jsonl(DOMAIN_DATA)
    n = len(shipped)
    assert m["counts"] == {"read": n, "written": n}  # paraphrases share answers: none dropped
    # every question is its own group; systematic sampling rounds each ratio to nearest
    assert m["splits"]["test"] == int(n * 0.15 + 0.5) > 0
    assert abs(m["splits"]["valid"] - int(n * 0.1 + 0.5)) <= 1  # waits a step when test takes it
    assert sum(m["splits"].values()) == n
    assert set(m["categories"]) == {r["category"] for r in shipped}
    assert all(c["test"] > 0 for c in m["categories"].values())
    assert m["sources"][0]["sha256"] == sha256_file(DOMAIN_DATA)
    assert m["template"]["fingerprint"] and m["seed"] == 0
    test = read_jsonl(result.out_dir / "test.jsonl")
    train_facts = {r["fact"] for r in read_jsonl(result.out_dir / "train.jsonl")}
    # held-out questions are paraphrases of trained facts
    assert sum(r["fact"] in train_facts for r in test) >= 0.9 * len(test)
    # validate-format takes the lengths prepare measured while file and tokenizer are unchanged
    sidecar = result.out_dir / "token_lengths.json"
    cached = validate_format(cfg)
    assert cached.ok and sidecar.is_file()
    sidecar.rename(tmp_path / "lengths.json")
    measured = validate_format(cfg)
    assert [f.token_lengths for f in cached.files] == [f.token_lengths for f in measured.files]
    (tmp_path / "lengths.json").rename(sidecar)
    train_file = result.out_dir / "train.jsonl"
    rows = read_jsonl(train_file)
    rows[0]["messages"][-1]["content"] = "far too long " * 200  # edited after prepare
    train_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert validate_format(cfg).counts() == {"length": 1}
    # same seed, same files
    again = prepare(
        cfg.model_copy(
            update={"prepare": cfg.prepare.model_copy(update={"out_dir": tmp_path / "b"})}
        )
    )
    assert (again.out_dir / "test.jsonl").read_text() == (result.out_dir / "test.jsonl").read_text()
    # strict held-out: whole facts stay on one side
    strict = cfg.prepare.model_copy(update={"group_by": "fact", "out_dir": tmp_path / "strict"})
    res = prepare(cfg.model_copy(update={"prepare": strict}))
    facts = {
        s: {r["fact"] for r in read_jsonl(res.out_dir / f"{s}.jsonl")}
        for s in ("train", "valid", "test")
    }
    assert facts["train"] and facts["valid"] and facts["test"]
    assert not facts["train"] & facts["test"] and not facts["train"] & facts["valid"]
    assert res.manifest["groups"]["test"] == len(facts["test"])


@pytest.mark.e2e
def test_raw_mlx_lm_trains_on_prepared_dir(tmp_path: Path, tiny_model: Path) -> None:
    from mlxtune.runtime import subprocess_env

    cfg_path = write_config(
        tmp_path, tiny_model, [{"path": str(DOMAIN_DATA)}], valid_ratio=0.1, test_ratio=0.1
    )
    assert cli("prepare", "-c", str(cfg_path), "--set", "train.max_seq_length=256").exit_code == 0
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlx_lm",
            "lora",
            "--model",
            str(tiny_model),
            "--train",
            "--data",
            str(tmp_path / "prepared"),
            "--iters",
            "2",
            "--batch-size",
            "2",
            "--num-layers",
            "-1",
            "--val-batches",
            "1",
            "--adapter-path",
            str(tmp_path / "adapter"),
        ],
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "adapter" / "adapters.safetensors").is_file()


def test_cli_json_in_a_real_process(tmp_path: Path, tiny_model: Path) -> None:
    d = BROKEN / "leakage"
    cfg_path = write_config(tmp_path, tiny_model, [{"path": str(d / "train.jsonl")}])
    proc = run_cli("validate-format", "-c", str(cfg_path), str(d / "train.jsonl"), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] and report["rows"] == 6 and report["format"] == "chat"


# ---------------------------------------------------------------------------------------------
# Units: the fast schema path agrees with jsonschema; batched lengths agree with training


BAD_VARIANTS: list[tuple[str, dict[str, Any]]] = [
    ("chat", {"messages": []}),
    ("chat", {"messages": [{"role": "bot", "content": "x"}]}),
    ("chat", {"messages": [{"role": "user", "content": 3}]}),
    ("chat", {"messages": [{"content": "x"}]}),  # content may be absent (tool calls), role not
    ("chat", {"messages": "hi"}),
    ("chat", {"messages": [{"role": "user", "content": "q"}], "id": True}),
    ("chat", {"messages": [{"role": "user", "content": "q"}], "keywords": ["a", 1]}),
    ("alpaca", {"instruction": "q"}),
    ("alpaca", {"instruction": "q", "output": None}),
    ("sharegpt", {"conversations": [{"from": "robot", "value": "x"}]}),
    ("completions", {"prompt": "q", "completion": ["a"]}),
    ("text", {"text": 1.5}),
]


@pytest.mark.parametrize(("fmt", "row"), BAD_VARIANTS)
def test_fast_schema_path_matches_jsonschema(fmt: str, row: dict[str, Any]) -> None:
    import jsonschema

    from mlxtune.data.records import _fast, schema_problems
    from mlxtune.formats import schema

    fast = _fast(fmt)
    assert fast is not None
    assert not fast(row)
    assert not jsonschema.Draft202012Validator(schema(fmt)).is_valid(row)
    assert schema_problems(row, fmt)


def test_good_fixture_rows_pass_both_schema_paths() -> None:
    import jsonschema

    from mlxtune.data.records import _fast
    from mlxtune.formats import detect_format, schema

    paths = sorted(GOOD.glob("*.jsonl"))
    assert len(paths) >= 5, paths  # one per jsonl format
    for path in paths:
        for row in read_jsonl(path):
            fmt = detect_format(row)
            assert fmt is not None
            fast = _fast(fmt)
            assert fast is not None and fast(row)
            jsonschema.validate(row, schema(fmt))


def test_clean_text_and_keys() -> None:
    from mlxtune.data.records import clean_text, exact_key, normalized_key

    assert clean_text("\ufeff  Ｐort　８０８０ \r\n\r\n\r\n\r\nok\u200b  ") == "Port 8080\n\nok"
    a = {
        "messages": [
            {"role": "user", "content": "Which port?"},
            {"role": "assistant", "content": "8080"},
        ]
    }
    b = {
        "messages": [
            {"role": "user", "content": "which  PORT"},
            {"role": "assistant", "content": "8080"},
        ]
    }
    c = {
        "messages": [
            {"role": "user", "content": "Other?"},
            {"role": "assistant", "content": "8080"},
        ]
    }
    assert exact_key(a) != exact_key(b) and normalized_key(a) == normalized_key(b)
    assert normalized_key(a) != normalized_key(c)  # same answer, different question: kept


@pytest.mark.e2e
def test_batched_lengths_equal_training_lengths(tiny_model: Path) -> None:
    from mlxtune import formats
    from mlxtune.config import ModelConfig
    from mlxtune.data.records import load_tokenizer

    tok, _, _ = load_tokenizer(ModelConfig(path=str(tiny_model)))
    recs = [formats.to_canonical(r) for r in read_jsonl(GOOD / "chat.jsonl")]
    recs.append({"text": "héllo wörld"})
    want = [len(formats.encode_for_training(tok, r)[0]) for r in recs]
    assert formats.training_lengths(tok, recs) == want


BAD_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' %}<|im_start|>bot: {{ m['content'] }}<|im_end|>\n"
    "{% else %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_prompt_train_and_serve_disagree(tmp_path: Path, tiny_model: Path) -> None:
    """A template whose generation header differs from the trained one is caught, and so is
    data prepared with another template than the model renders with now."""
    cfg_path = write_config(tmp_path, tiny_model, [{"path": str(GOOD / "chat.jsonl")}])
    assert cli("prepare", "-c", str(cfg_path)).exit_code == 0
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["model"].update(chat_template=BAD_TEMPLATE, override_chat_template=True)
    cfg_path.write_text(yaml.safe_dump(cfg))
    res = cli("validate-format", "-c", str(cfg_path), "--json")
    assert res.exit_code == 1
    report = json.loads(res.stdout)
    assert report["problem_counts"] == {"prompt": 2}
    texts = [p["text"] for p in report["problems"]]
    out = tmp_path / "prepared"
    assert texts[0].startswith(f"{out}/train.jsonl:1: prompt: training prompt (")
    assert "differs from the generation prompt" in texts[0]
    assert texts[1].startswith(f"{out}/manifest.json: template.fingerprint: prepared with template")


def test_not_utf8_and_missing_group_field(tmp_path: Path, tiny_model: Path) -> None:
    path = tmp_path / "latin1.jsonl"
    good = (GOOD / "chat.jsonl").read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*good[:2], '{"text": "caf\xe9"}\n'.encode("latin-1"), *good[2:]]))
    cfg_path = write_config(tmp_path, tiny_model, [{"path": str(path)}])
    line = f"{path}:3: encoding: not UTF-8 (byte 14: invalid continuation byte)"
    prep = cli("prepare", "-c", str(cfg_path))
    assert prep.exit_code == 1 and line in prep.stderr
    val = cli("validate-format", "-c", str(cfg_path), str(path))
    assert val.exit_code == 1 and line in val.stdout

    cfg_path = write_config(tmp_path, tiny_model, [{"path": str(GOOD / "completions.jsonl")}])
    prep = cli("prepare", "-c", str(cfg_path), "--set", "prepare.group_by=fact")
    assert prep.exit_code == 1
    assert (
        f"{GOOD / 'completions.jsonl'}:1: fact: missing (prepare.group_by needs it)" in prep.stderr
    )


def test_system_prompt_and_sqlite_rows(tmp_path: Path, tiny_model: Path) -> None:
    src = SOURCES["sqlite"](tmp_path)
    cfg_path = write_config(tmp_path, tiny_model, [src])
    res = cli("prepare", "-c", str(cfg_path), "--set", "data.system_prompt=Answer briefly.")
    assert res.exit_code == 0, res.output
    rows = [
        r
        for s in ("train", "valid", "test")
        for r in read_jsonl(tmp_path / "prepared" / f"{s}.jsonl")
    ]
    assert len(rows) == 8  # the failed job is filtered by the query
    assert all(r["messages"][0] == {"role": "system", "content": "Answer briefly."} for r in rows)
    assert {r["source"] for r in rows} == {"jobs.db"}
