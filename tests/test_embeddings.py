"""Embeddings from the tiny Llama (pooled hidden states) and the tiny BERT (mlx-embeddings)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import make_adapter, run_cli
from mlxtune.config import load_config
from mlxtune.embeddings import (
    DimensionsNotSupported,
    EmbeddingError,
    EmbeddingLimitError,
    EmbedLimits,
    PooledEmbedder,
    embed_texts,
    embed_tokens,
    encode_inputs,
    load_embedder,
    pool,
    truncate,
)
from mlxtune.errors import ConfigError, MlxtuneError

TEXTS = [
    "Which port does the Rust LLM Router use?",
    "hi",
    "Universal AI Tools uses a hybrid system architecture that combines Rust, Go and Swift.",
    "What does the auto-healing loop check every 30 seconds?",
    "LoRA",
]
LIMITS = EmbedLimits(max_inputs=8, max_tokens_per_input=64)


def _max_diff(a: Any, b: Any) -> float:
    import mlx.core as mx

    return float(mx.abs(a - b).max().item())


def _one_at_a_time(embedder: Any, tokens: list[list[int]]) -> Any:
    import mlx.core as mx

    return mx.concatenate([embedder.embed_batch([t]) for t in tokens])


@pytest.fixture(scope="module")
def llama(tiny_model: Path) -> Any:
    return load_embedder(load_config(flags={"model.path": str(tiny_model)}))


@pytest.fixture(scope="module")
def bert(tiny_bert: Path) -> Any:
    flags = {"embed.kind": "dedicated", "embed.model": str(tiny_bert)}
    return load_embedder(load_config(flags=flags))


# ---------------------------------------------------------------------------------------------
# Config and start-up


def test_config_ties_model_to_kind() -> None:
    with pytest.raises(ConfigError, match=r"kind: dedicated needs embed\.model"):
        load_config(flags={"embed.kind": "dedicated"})
    with pytest.raises(ConfigError, match=r"embed\.model is for kind: dedicated"):
        load_config(flags={"embed.model": "some/dir"})
    cfg = load_config(flags={"embed.kind": "dedicated", "embed.model": "models/bert/"})
    assert cfg.embed.served_name == "bert"


def test_dedicated_without_the_extra_names_the_install_command(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "mlx_embeddings", None)  # as if not installed
    cfg = load_config(flags={"embed.kind": "dedicated", "embed.model": str(tmp_path)})
    with pytest.raises(MlxtuneError, match=r"pip install 'mlxtune\[embed\]'"):
        load_embedder(cfg)


# ---------------------------------------------------------------------------------------------
# Pooled language-model embeddings


@pytest.mark.e2e
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_batch_equals_one_at_a_time(llama: Any, pooling: str) -> None:
    embedder = PooledEmbedder(llama.model, llama.tokenizer, pooling=pooling)
    tokens = [embedder.tokenize(t) for t in TEXTS]
    assert len({len(t) for t in tokens}) == len(tokens)  # every batch needs padding
    single = _one_at_a_time(embedder, tokens)
    assert _max_diff(embed_tokens(embedder, tokens, batch_size=32), single) < 1e-5
    assert _max_diff(embed_tokens(embedder, tokens, batch_size=2), single) < 1e-5
    import mlx.core as mx

    norms = mx.linalg.norm(single, axis=-1).tolist()
    assert all(abs(n - 1) < 1e-5 for n in norms)
    # different texts, different vectors
    assert _max_diff(single[0], single[3]) > 1e-2


@pytest.mark.e2e
def test_left_padding_without_a_mask_changes_the_vectors(llama: Any) -> None:
    """Why we pad on the right: the same batch padded on the left, unmasked, drifts."""
    import mlx.core as mx

    tokens = [llama.tokenize(t) for t in TEXTS]
    width = max(len(t) for t in tokens)
    ids = mx.array([[llama.pad_id] * (width - len(t)) + t for t in tokens])
    mask = mx.array([[0] * (width - len(t)) + [1] * len(t) for t in tokens], dtype=mx.float32)
    left = pool(llama._backbone(ids), mask, "mean")
    assert _max_diff(left, _one_at_a_time(llama, tokens)) > 1e-2


@pytest.mark.e2e
def test_token_arrays_match_text(llama: Any) -> None:
    tokens = encode_inputs(llama, TEXTS[:2], LIMITS)
    assert encode_inputs(llama, tokens, LIMITS) == tokens
    assert encode_inputs(llama, tokens[0], LIMITS) == [tokens[0]]
    assert encode_inputs(llama, TEXTS[0], LIMITS) == [tokens[0]]
    assert _max_diff(embed_tokens(llama, tokens), embed_texts(llama, TEXTS[:2])) == 0.0


@pytest.mark.e2e
def test_inputs_are_checked_against_the_limits(llama: Any) -> None:
    with pytest.raises(EmbeddingLimitError, match=r"embed\.max_inputs") as e:
        encode_inputs(llama, ["a"] * 9, LIMITS)
    assert e.value.limit == "embed.max_inputs"
    too_long = "embed.max_tokens_per_input: input has \\d+ tokens, at most 64"
    with pytest.raises(EmbeddingLimitError, match=too_long):
        encode_inputs(llama, " ".join(["gateway"] * 65), LIMITS)
    assert len(encode_inputs(llama, [1] * 64, LIMITS)[0]) == 64  # the limit itself is allowed
    for bad, message in [
        ("", "input: empty input"),
        ([], "input: empty list"),
        (["ok", ""], r"input\[1\]: empty input"),
        ([[1, 2], [99999]], r"input\[1\]: token id 99999 outside the vocabulary"),
        ([[1, -1]], r"input\[0\]: token id -1"),
        ({"text": "hi"}, "input: expected a string"),
        (["ok", 3.5], r"input\[1\]: expected a string or a list of token ids"),
    ]:
        with pytest.raises(EmbeddingError, match=message):
            encode_inputs(llama, bad, LIMITS)


@pytest.mark.e2e
def test_adapter_gives_its_own_embeddings(tiny_model: Path, tmp_path: Path, llama: Any) -> None:
    cfg = load_config(flags={"model.path": str(tiny_model)})
    base = embed_texts(llama, TEXTS)
    noop = load_embedder(cfg, make_adapter(tiny_model, tmp_path / "noop", b_scale=0.0))
    assert _max_diff(embed_texts(noop, TEXTS), base) < 1e-5
    tuned = load_embedder(cfg, make_adapter(tiny_model, tmp_path / "tuned", b_scale=0.05))
    assert _max_diff(embed_texts(tuned, TEXTS), base) > 1e-3


@pytest.mark.e2e
def test_dimensions_only_where_the_model_allows(llama: Any, tiny_model: Path) -> None:
    import mlx.core as mx

    vectors = embed_texts(llama, TEXTS[:2])
    assert truncate(vectors, llama.dimensions, llama) is vectors
    with pytest.raises(DimensionsNotSupported, match="dimensions: 64 is not supported"):
        truncate(vectors, 64, llama)
    flags = {"model.path": str(tiny_model), "embed.matryoshka_dimensions": [64, 128]}
    matryoshka = load_embedder(load_config(flags=flags))
    cut = truncate(vectors, 64, matryoshka)
    assert cut.shape == (2, 64)
    expected = vectors[:, :64] / mx.linalg.norm(vectors[:, :64], axis=-1, keepdims=True)
    assert _max_diff(cut, expected) < 1e-6
    with pytest.raises(DimensionsNotSupported, match=r"supported: 64, 128, 256"):
        truncate(vectors, 100, matryoshka)


# ---------------------------------------------------------------------------------------------
# Dedicated (BERT-style) models through mlx-embeddings


@pytest.mark.e2e
def test_tiny_bert_cli_builds_what_mlx_embeddings_loads(tmp_path: Path) -> None:
    pytest.importorskip("mlx_embeddings")
    out = tmp_path / "bert"
    result = run_cli("tiny-model", "--preset", "bert", "--out", str(out))
    assert result.returncode == 0, result.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "bert"
    import mlx_embeddings

    model, tokenizer = mlx_embeddings.load(str(out))
    ids = tokenizer.encode("Which port does the gateway use?")
    assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
    assert tokenizer.unk_token_id not in ids  # WordPiece trained on the shipped data
    assert model.config.hidden_size == 128


@pytest.mark.e2e
def test_bert_batch_equals_one_at_a_time(bert: Any) -> None:
    tokens = encode_inputs(bert, TEXTS, LIMITS)
    single = _one_at_a_time(bert, tokens)
    assert _max_diff(embed_tokens(bert, tokens), single) < 1e-5
    assert bert.kind == "dedicated" and bert.dimensions == 128
    assert bert.max_tokens == 512  # the smaller of embed.max_tokens_per_input and positions


@pytest.mark.e2e
def test_bert_refuses_more_tokens_than_its_positions(tiny_bert: Path) -> None:
    flags = {
        "embed.kind": "dedicated",
        "embed.model": str(tiny_bert),
        "embed.max_tokens_per_input": 4096,
    }
    embedder = load_embedder(load_config(flags=flags))
    assert embedder.max_tokens == 512
    with pytest.raises(EmbeddingLimitError, match="max_position_embeddings"):
        encode_inputs(embedder, [5] * 513, EmbedLimits(8, 4096))


# ---------------------------------------------------------------------------------------------
# The serving worker: batching and overload


@pytest.mark.e2e
def test_worker_batches_waiting_requests_and_refuses_overload(llama: Any) -> None:
    from mlxtune.serve.embed_worker import EmbedJob, EmbedWorker, QueueFull

    batches: list[tuple[int, int]] = []
    worker = EmbedWorker(
        {"base": llama},
        max_queue=4,
        batch_size=32,
        on_batch=lambda model, requests, inputs, s: batches.append((requests, inputs)),
    )
    tokens = [llama.tokenize(t) for t in TEXTS]
    jobs = [EmbedJob("base", [t]) for t in tokens[:4]]
    for job in jobs:  # queued before the worker starts: they wait together
        worker.submit(job)
    with pytest.raises(QueueFull, match="queue full"):
        worker.submit(EmbedJob("base", [tokens[4]]))
    worker.start()
    try:
        got = [job.future.result(timeout=60) for job in jobs]
    finally:
        worker.stop()
    assert batches == [(4, 4)]  # one forward pass for the four requests
    single = _one_at_a_time(llama, tokens[:4])
    for i, vectors in enumerate(got):
        assert vectors.shape == (1, llama.dimensions)
        assert abs(vectors[0] - single[i].tolist()).max() < 1e-5


@pytest.mark.e2e
def test_an_admitted_request_holds_its_place_until_the_worker_takes_it(llama: Any) -> None:
    """Places are taken before tokenizing: a burst cannot all pass the check, queue behind the
    tokenizer, and be refused only after it (the refusals that took 70-300 ms)."""
    from mlxtune.serve.embed_worker import EmbedJob, EmbedWorker, QueueFull

    worker = EmbedWorker({"base": llama}, max_queue=2, batch_size=8)
    first, second = worker.admit(), worker.admit()  # both still "tokenizing": no job yet
    with pytest.raises(QueueFull, match="queue full"):
        worker.admit()
    assert worker.queue_depth() == 2
    worker.release(second)  # ended without a job (say, a 400): its place is free again
    worker.release(second)  # handing it back twice frees nothing more
    third = worker.admit()
    with pytest.raises(QueueFull):
        worker.admit()
    future = worker.submit(EmbedJob("base", [[1, 2, 3]]), first)
    worker.release(first)  # queued: the place is the job's until the worker takes it
    with pytest.raises(QueueFull):
        worker.admit()
    with pytest.raises(MlxtuneError, match="already used"):
        worker.submit(EmbedJob("base", [[4]]), first)
    worker.start()
    try:
        assert future.result(timeout=60).shape == (1, llama.dimensions)
        assert worker.queue_depth() == 1  # `third` still holds one
        worker.release(worker.admit())  # the worker took the job: its place is free
    finally:
        worker.release(third)
        worker.stop()


@pytest.mark.e2e
def test_fail_fast_worker_refuses_while_busy(llama: Any) -> None:
    from mlxtune.serve.embed_worker import EmbedJob, EmbedWorker, QueueFull

    worker = EmbedWorker({"base": llama}, max_queue=4, batch_size=8, fail_fast=True)
    tokenizing = worker.admit()  # a request ahead, not yet tokenized, already makes it busy
    with pytest.raises(QueueFull, match="busy"):
        worker.admit()
    worker.release(tokenizing)
    first = worker.submit(EmbedJob("base", [[1, 2, 3]]))
    with pytest.raises(QueueFull, match="busy"):
        worker.submit(EmbedJob("base", [[4, 5]]))
    worker.start()
    try:
        first.result(timeout=60)
        worker.submit(EmbedJob("base", [[4, 5]])).result(timeout=60)  # free again: accepted
    finally:
        worker.stop()
    assert not worker.alive


@pytest.mark.e2e
@pytest.mark.slow
def test_bench_embed_reports_every_figure_beside_the_targets(
    tiny_model: Path, tmp_path: Path
) -> None:
    from mlxtune.bench import bench
    from mlxtune.bench.embed import target_rows

    flags = {
        "model.path": str(tiny_model),
        "bench.requests_per_level": 4,
        "bench.concurrency": [1, 4],
        "serve.usage_db": str(tmp_path / "usage.sqlite"),
    }
    result = bench(load_config(flags=flags), what="embed", baseline="mlx-lm")
    metrics = {(f.case, f.metric) for f in result.figures}
    for case, metric in [
        ("load", "load_s"),
        ("sequential", "mean_ms"),
        ("sequential", "p95_ms"),
        ("sequential", "success_pct"),
        ("c=4", "qps"),
        ("c=4", "n503"),
        ("server", "peak_memory_gb"),
        ("server", "max_rss_mb"),
        ("burst 32, queue 2", "refusal_max_ms"),
        ("burst 32, queue 2", "refusal_server_max_ms"),
    ]:
        assert (case, metric) in metrics, (case, metric)
    burst = result.figure("embed", "burst 32, queue 2", "n503")
    assert burst is not None and burst.mlxtune[0] > 0  # the small queue really refused some
    seq = result.figure("embed", "sequential", "success_pct")
    assert seq is not None and seq.mlxtune == [100.0]
    rows = target_rows(result)
    assert [r[0] for r in rows][:2] == ["load", "sequential mean"]
    assert all(r[1] is not None for r in rows)
    # The baseline (mlx-lm's model + pooling in a plain loop) measured the same figures.
    assert result.baseline == "mlx-lm"
    for case, metric in [("load", "load_s"), ("sequential", "mean_ms"), ("c=4", "qps"),
                         ("server", "peak_memory_gb"), ("server", "max_rss_mb")]:  # fmt: skip
        fig = result.figure("embed", case, metric)
        assert fig is not None and len(fig.baseline) == 1 and fig.ratio, (case, metric)
    assert seq.baseline == [100.0]


@pytest.mark.e2e
def test_direct_baseline_embeds_a_dedicated_model_with_mlx_embeddings(
    tiny_bert: Path, tiny_model: Path
) -> None:
    from mlxtune.bench.core import Recorder
    from mlxtune.bench.embed import bench_embed_direct_once, direct_baseline_name

    flags = {
        "model.path": str(tiny_model),
        "embed.kind": "dedicated",
        "embed.model": str(tiny_bert),
        "bench.requests_per_level": 4,
        "bench.concurrency": [2],
    }
    cfg = load_config(flags=flags)
    assert direct_baseline_name(cfg) == "mlx-embeddings"
    rec = Recorder()
    bench_embed_direct_once(cfg, rec, lambda _msg: None)
    got = {(case, metric): f.baseline for (_, case, metric), f in rec.figures.items()}
    assert set(got) >= {("load", "load_s"), ("sequential", "p95_ms"), ("c=2", "qps")}
    assert all(len(v) == 1 and v[0] > 0 for v in got.values()), got
