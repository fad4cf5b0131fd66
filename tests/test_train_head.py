"""The training loss projects to the vocabulary only at trained positions: the same loss as
full logits, one loss shape per batch width, and full logits for a model whose output is more
than its head applied to its backbone."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from mlxtune.formats import read_records, resolve_template
from mlxtune.train.data import Batches
from mlxtune.train.loop import LoopArgs, TrainStep, output_head


@pytest.fixture(scope="module")
def lora_model(tiny_model: Path) -> tuple[Any, Any]:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.tuner.utils import linear_to_lora_layers

    mx.random.seed(0)
    model, tok = load(str(tiny_model))
    resolve_template(tok)
    model.freeze()
    linear_to_lora_layers(model, 2, {"rank": 4, "scale": 20.0, "dropout": 0.0})
    # lora_b starts at zero; give it weights so the adapter changes the logits under test
    for _, module in model.named_modules():
        if hasattr(module, "lora_b"):
            module.lora_b = mx.random.normal(module.lora_b.shape) * 0.05
    return model, tok


def _step(model: Any, streams: int = 1) -> TrainStep:
    import mlx.core as mx
    import mlx.optimizers as optim

    args = LoopArgs(1, 1, None, 1, 1, 1, 1, 1, None, 0.0, 0, cpu_streams=streams)
    return TrainStep(model, optim.Adam(learning_rate=1e-4), args, mx.distributed.init())


def _batches(tok: Any, domain_data: Path, tmp_path: Path) -> Batches:
    from mlxtune.train.data import tokenize

    path = tmp_path / "train.jsonl"
    shutil.copy(domain_data / "train.jsonl", path)
    rows = [r for _, r in read_records(path)]
    examples, _ = tokenize(rows, tok, mask_prompt=True, max_seq_length=256)
    return Batches(examples, 4, seed=0)


def test_trained_positions_give_the_full_logits_loss(
    lora_model: tuple[Any, Any], domain_data: Path, tmp_path: Path
) -> None:
    model, tok = lora_model
    step = _step(model)
    assert step.head is not None  # the tiny Llama has its own lm_head
    batches = _batches(tok, domain_data, tmp_path)
    step.shape_like(batches)
    for micro in range(3):
        batch = batches.arrays(batches.indices(micro))
        picked = step.to_device(batch)
        assert picked[2].size < batch[2].size  # fewer positions than the whole batch
        head, step.head = step.head, None
        full = step.to_device(batch)
        want, want_toks = step.loss_fn(model, *full[:3])
        step.head = head
        got, got_toks = step.loss_fn(model, *picked[:3])
        assert got_toks.item() == want_toks.item() == batch[2].sum()
        assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_one_loss_shape_per_batch_width(
    lora_model: tuple[Any, Any], domain_data: Path, tmp_path: Path
) -> None:
    model, tok = lora_model
    step = _step(model)
    batches = _batches(tok, domain_data, tmp_path)
    step.shape_like(batches)
    shapes: dict[int, set[int]] = {}
    for micro in range(len(batches)):
        batch = batches.arrays(batches.indices(micro))
        _, (positions, _), weights, _ = step.to_device(batch)
        assert weights.sum().item() == batch[2].sum()  # every trained position, once
        shapes.setdefault(batch[0].shape[1], set()).add(positions.shape[0])
    assert len(shapes) > 1
    assert all(len(counts) == 1 for counts in shapes.values())


@pytest.mark.parametrize("streams", [2, 3])
def test_a_batch_split_over_streams_gives_the_same_loss_and_gradient(
    lora_model: tuple[Any, Any], domain_data: Path, tmp_path: Path, streams: int
) -> None:
    """`train.cpu_streams`: the parts' losses over the whole batch's tokens add up to the
    batch's loss, and their gradients to its gradient (to float32 rounding: another order)."""
    import numpy as np
    from mlx.utils import tree_flatten

    model, tok = lora_model
    batches = _batches(tok, domain_data, tmp_path)
    one, split = _step(model), _step(model, streams)
    one.shape_like(batches)
    split.shape_like(batches)
    for micro in range(3):
        batch = batches.arrays(batches.indices(micro))
        whole, parts = one.to_device(batch), split.to_device(batch)
        assert [x.shape[0] for x in parts[0]] == {2: [2, 2], 3: [2, 1, 1]}[streams]
        assert sum(x.shape[0] for x in parts[0]) == batch[0].shape[0]
        assert sum(w.sum().item() for w in parts[2]) == batch[2].sum()
        want_loss, want_toks, want_grad = one.step(*whole[:3], None, False)
        got_loss, got_toks, got_grad = split.step(*parts[:3], None, False)
        assert got_toks.item() == want_toks.item()
        assert got_loss.item() == pytest.approx(want_loss.item(), rel=1e-5)
        want, got = dict(tree_flatten(want_grad)), dict(tree_flatten(got_grad))
        assert want.keys() == got.keys()
        for k in want:
            np.testing.assert_allclose(np.array(got[k]), np.array(want[k]), rtol=1e-3, atol=1e-6)
    # validation never splits: the same loss from either step
    valid = batches.examples[:8]
    assert split.evaluate(valid, 4, -1) == pytest.approx(one.evaluate(valid, 4, -1), rel=1e-6)


def test_tied_embeddings_project_through_the_embedding() -> None:
    import mlx.core as mx
    from mlx_lm.models import llama

    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=32,
        num_hidden_layers=1,
        intermediate_size=64,
        num_attention_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=64,
        tie_word_embeddings=True,
    )
    model = llama.Model(args)
    mx.eval(model.parameters())
    head = output_head(model)
    assert head is not None and not hasattr(model, "lm_head")
    x = mx.array([[3, 4, 5]])
    assert mx.allclose(head(model, model.model(x)), model(x)).item()


def test_a_model_that_changes_its_logits_keeps_full_logits(tiny_model: Path) -> None:
    from mlx_lm import load

    model, _ = load(str(tiny_model))

    class SoftCapped(type(model)):  # type: ignore[misc]
        def __call__(self, inputs: Any, cache: Any = None) -> Any:
            import mlx.core as mx

            return mx.tanh(super().__call__(inputs, cache) / 2.0) * 2.0

    model.__class__ = SoftCapped
    assert output_head(model) is None
    assert _step(model).head is None
