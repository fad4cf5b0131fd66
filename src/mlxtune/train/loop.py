"""The training loop: `train_loop(model, optimizer, train_batches, valid, args, callback)`, shaped
like mlx-lm's `tuner.trainer.train` and reporting through the typed events in `events.py`.

mlx-lm's `train()` cannot resume optimizer state, step and data order, keep the best adapter or
stop early, so the loop lives here. Compared with mlx-lm's loop this one (a) does not clear the
allocator cache every step (mlx-lm's default `clear_cache_threshold=0` frees and re-allocates
every buffer each step), (b) pads to a multiple of 8 instead of 32 (+1) on the CPU, (c) builds
the next batch while the current step runs (`mx.async_eval`), (d) syncs with the host only
at report, validation and save steps (otherwise it waits for the previous step, not this one),
and (e) projects to the vocabulary only at the positions the loss is taken (`output_head`):
with the prompt masked that is about half of them, and the logits of the rest were discarded,
(f) on the CPU takes the loss's gradient from the forward's exponentials (`loss.py`), and
(g) on a CPU with several cores splits each batch's rows over MLX streams that run at once
(`train.cpu_streams`): mlx-lm's step keeps to one core, OpenBLAS's threads aside.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mlxtune.config import TrainConfig
from mlxtune.train.data import (
    PAD_TO,
    Batches,
    Example,
    collate,
    row_slices,
    trained_positions,
)
from mlxtune.train.events import (
    CheckpointReached,
    EarlyStopped,
    LoopState,
    StepReport,
    TrainingCallback,
    TrainInterrupted,
    ValidationReport,
)


@dataclass(frozen=True)
class LoopArgs:
    """The loop's knobs, like mlx-lm's `TrainingArgs` (from `train:` via `from_config`)."""

    total_steps: int
    grad_accumulation_steps: int
    grad_clip: float | None
    steps_per_report: int
    steps_per_eval: int
    save_every: int
    val_batch_size: int
    val_batches: int  # -1: the whole validation set
    early_stopping_patience: int | None
    early_stopping_min_delta: float
    seed: int
    checkpoints: Path | None = None  # where checkpoints go; None on ranks that do not write
    cpu_streams: int = 1  # `runtime.train_cpu_streams`, resolved by the plan

    @classmethod
    def from_config(
        cls,
        t: TrainConfig,
        total_steps: int,
        n_valid: int,
        checkpoints: Path | None,
        cpu_streams: int = 1,
    ) -> LoopArgs:
        return cls(
            total_steps=total_steps,
            grad_accumulation_steps=t.grad_accumulation_steps,
            grad_clip=t.grad_clip,
            steps_per_report=t.steps_per_report,
            steps_per_eval=t.steps_per_eval,
            save_every=t.save_every,
            val_batch_size=max(1, min(t.batch_size, n_valid)),
            val_batches=t.val_batches,
            early_stopping_patience=t.early_stopping_patience,
            early_stopping_min_delta=t.early_stopping_min_delta,
            seed=t.seed,
            checkpoints=checkpoints,
            cpu_streams=cpu_streams,
        )


@dataclass
class LoopOutcome:
    """Where the loop ended (`train` turns it into the run's FinalMetrics)."""

    state: LoopState
    train_loss: float | None
    val_loss: float | None
    stopped_early: bool
    peak_memory_gb: float


_MASKED_ROW = Example([0, 0], [False, False])  # fills a short validation batch; adds no loss


class TrainStep:
    """The compiled training step (gradient accumulation, all-reduce, clipping, update) and the
    validation loss, over one model and optimizer. A subclass may change how a batch reaches
    the model (`logits`, `collate`, `to_device`) and whether the step compiles."""

    compiled = True
    # Vocabulary logits only where the loss is taken (see `output_head`); a subclass whose
    # model is laid out otherwise (VLM) says False.
    trained_positions_only = True
    # Validation batches pad like the training batches (`shape_like` sets it from them): on a GPU
    # every new shape is a new trace and, on a cold kernel cache, new kernels to compile.
    pad_to = PAD_TO
    fills_short_batches = True  # a step whose rows carry more than tokens (VLM) says False
    splits_batches = True  # over `LoopArgs.cpu_streams`; a step with its own batches says False

    def __init__(self, model: Any, optimizer: Any, args: LoopArgs, world: Any) -> None:
        import mlx.core as mx
        import mlx.nn as nn
        from mlx.nn.utils import average_gradients
        from mlx.utils import tree_map

        from mlxtune.train.loss import cross_entropy

        self.model = model
        self.world = world
        self.trained_by_width: dict[int, int] = {}  # set by `shape_like`
        self.part_trained_by_width: dict[int, int] = {}  # the same for a split batch's parts
        accum = args.grad_accumulation_steps
        clip = args.grad_clip
        world_size = world.size()

        self.head = output_head(model) if self.trained_positions_only else None
        n_streams = args.cpu_streams if self.splits_batches else 1
        # Each part of a split batch runs on a CPU stream of its own: MLX gives each stream a
        # thread, so the parts' forward and backward run at once, one per core.
        self.streams = [mx.new_stream(mx.cpu) for _ in range(n_streams)] if n_streams > 1 else []

        def loss_fn(
            model: Any, inputs: Any, targets: Any, mask: Any, ntoks: Any = None
        ) -> tuple[Any, Any]:
            """Mean loss per trained token, over `ntoks` tokens (the whole batch's, for a
            part of it) or this mask's; and this mask's token count."""
            logits, targets = self.scored(model, inputs, targets)
            ce = cross_entropy(logits, targets) * mask
            mine = mask.sum()
            return ce.astype(mx.float32).sum() / (mine if ntoks is None else ntoks), mine

        self.loss_fn = loss_fn
        value_and_grad = nn.value_and_grad(model, loss_fn)
        self.state = [model.state, optimizer.state, mx.random.state]

        def split_value_and_grad(inputs: Any, targets: Any, mask: Any) -> Any:
            """The batch's (loss, tokens) and gradient from its parts (`to_device`), each on
            its stream: parts' losses over the whole batch's tokens, added; so are gradients."""
            ntoks = sum(m.sum() for m in mask)
            losses, grads = [], []
            for stream, x, y, m in zip(self.streams, inputs, targets, mask, strict=False):
                with mx.stream(stream):
                    (part_loss, _), part_grad = value_and_grad(model, x, y, m, ntoks)
                losses.append(part_loss)
                grads.append(part_grad)
            grad = grads[0]
            for g in grads[1:]:
                grad = tree_map(lambda a, b: a + b, grad, g)
            return (sum(losses[1:], losses[0]), ntoks), grad

        def step(inputs: Any, targets: Any, mask: Any, prev: Any, update: bool) -> Any:
            if isinstance(mask, tuple):  # a split batch
                (loss, toks), grad = split_value_and_grad(inputs, targets, mask)
            else:
                (loss, toks), grad = value_and_grad(model, inputs, targets, mask)
            if prev is not None:
                grad = tree_map(lambda a, b: a + b, grad, prev)
            if update:
                if world_size > 1:
                    grad = average_gradients(grad)
                if accum > 1:
                    grad = tree_map(lambda g: g / accum, grad)
                if clip:
                    import mlx.optimizers as optim

                    grad, _ = optim.clip_grad_norm(grad, clip)
                optimizer.update(model, grad)
                grad = None
            return loss, toks, grad

        self.step = (
            mx.compile(step, inputs=self.state, outputs=self.state) if self.compiled else step
        )

    def logits(self, model: Any, inputs: Any) -> Any:
        return model(inputs)

    def scored(self, model: Any, inputs: Any, targets: Any) -> tuple[Any, Any]:
        """(logits, targets) where the loss is scored: every position, or with `self.head`
        only the trained ones (`to_device` then passes targets as (positions, targets there))."""
        if self.head is None:
            return self.logits(model, inputs), targets
        positions, picked = targets
        hidden = model.model(inputs)
        hidden = hidden.reshape(-1, hidden.shape[-1])[positions]
        return self.head(model, hidden), picked

    def shape_like(self, batches: Batches) -> None:
        """Pad as the training batches do, and take each width's trained-position count from
        them, so validation and the step see no more shapes than the batches make."""
        self.pad_to = batches.pad_to
        self.trained_by_width = batches.trained_by_width()
        if self.streams:
            self.part_trained_by_width = batches.trained_by_width(len(self.streams))

    def collate(self, batch: list[Example]) -> Any:
        return collate(batch, self.pad_to)

    def to_device(
        self, batch: tuple[Any, Any, Any, int], split: bool = True
    ) -> tuple[Any, Any, Any, int]:
        """A `Batches.arrays` batch (numpy) as mx arrays for `step`: with several streams (and
        `split`), tuples of its row ranges (`row_slices`), one per stream."""
        inputs, targets, mask, real = batch
        if not (self.streams and split):
            return (*self.device_arrays(inputs, targets, mask, self.trained_by_width), real)
        parts = [
            self.device_arrays(inputs[r], targets[r], mask[r], self.part_trained_by_width)
            for r in row_slices(len(inputs), len(self.streams))
        ]
        x, y, m = (tuple(p[i] for p in parts) for i in range(3))
        return x, y, m, real

    def device_arrays(
        self, inputs: Any, targets: Any, mask: Any, trained_by_width: dict[int, int]
    ) -> tuple[Any, Any, Any]:
        """(inputs, targets, mask) as mx arrays; with `self.head`, the targets and mask of the
        trained positions only (`scored`), padded to `trained_by_width`'s count."""
        import mlx.core as mx

        if self.head is None:
            return mx.array(inputs), mx.array(targets), mx.array(mask)
        at_least = trained_by_width.get(inputs.shape[1], 0)
        positions, weights = trained_positions(mask, self.pad_to, at_least)
        picked = targets.reshape(-1)[positions]
        return mx.array(inputs), (mx.array(positions), mx.array(picked)), mx.array(weights)

    def evaluate(self, valid: list[Example], batch_size: int, max_batches: int) -> float:
        """Mean validation loss per trained token, over every rank. A short last batch is
        filled with fully masked rows, so every batch has one shape and the loss is the same."""
        import mlx.core as mx

        self.model.eval()
        rank, size = self.world.rank(), self.world.size()
        order = sorted(range(len(valid)), key=lambda i: len(valid[i].tokens))
        groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
        if max_batches != -1:
            groups = groups[:max_batches]
        total, ntok = mx.array(0.0), mx.array(0.0)
        for g in groups:
            if self.fills_short_batches:
                g = [*g, *[-1] * (batch_size - len(g))]
            mine = g[rank::size]
            if all(i < 0 for i in mine):
                continue
            batch = [valid[i] if i >= 0 else _MASKED_ROW for i in mine]
            inputs, targets, mask, _ = self.to_device(self.collate(batch), split=False)
            loss, toks = self.loss_fn(self.model, inputs, targets, mask)
            total = total + loss * toks
            ntok = ntok + toks
            mx.eval(total, ntok)
        if size > 1:
            total = mx.distributed.all_sum(total, stream=mx.cpu)
            ntok = mx.distributed.all_sum(ntok, stream=mx.cpu)
        self.model.train()
        return _item(total / mx.maximum(ntok, 1))


def train_loop(
    model: Any,
    optimizer: Any,
    train_batches: Batches,
    valid: list[Example],
    args: LoopArgs,
    callback: TrainingCallback | None = None,
    *,
    world: Any,
    start: LoopState | None = None,
    step_type: type[TrainStep] | None = None,
) -> LoopOutcome:
    """Train from `start` (a fresh run, or a checkpoint's state with weights and optimizer state
    already loaded) to `args.total_steps`, or until early stopping. `step_type` replaces the
    text step (vision-language models bring their own: `vlm.train.VisionTrainStep`)."""
    trainer = (step_type or TrainStep)(model, optimizer, args, world)
    trainer.shape_like(train_batches)
    return _Loop(
        model,
        optimizer,
        train_batches,
        valid,
        args,
        callback or TrainingCallback(),
        world,
        start,
        trainer,
    ).run()


@dataclass
class _Window:
    """What happened since the last StepReport."""

    losses: list[Any] = field(default_factory=list)
    trained: list[Any] = field(default_factory=list)  # trained-token counts (mx arrays)
    tokens: int = 0  # every non-pad token this rank saw
    time_s: float = 0.0
    steps: int = 0


class _Loop:
    def __init__(
        self,
        model: Any,
        optimizer: Any,
        batches: Batches,
        valid: list[Example],
        args: LoopArgs,
        callback: TrainingCallback,
        world: Any,
        start: LoopState | None,
        trainer: TrainStep,
    ) -> None:
        self.model, self.optimizer, self.batches, self.valid = model, optimizer, batches, valid
        self.args, self.callback, self.world = args, callback, world
        self.state = replace(start) if start else LoopState()
        self.trainer = trainer
        self.window = _Window()
        self.wall_before, self.wall_start = self.state.wall_s, time.perf_counter()
        self.train_loss: float | None = None
        self.val_loss: float | None = None
        self.stopped_early = False

    def run(self) -> LoopOutcome:
        import mlx.core as mx

        a, state = self.args, self.state
        self.model.train()
        if state.step:
            # Resuming: the RNG (dropout) restarts from (seed, step), as it did when the
            # checkpoint was written, so a resumed run draws what the uninterrupted one drew.
            mx.random.seed(step_seed(a.seed, state.step))
        self.wall_start = time.perf_counter()
        mx.reset_peak_memory()
        try:
            self._steps()
        except KeyboardInterrupt:
            self.callback.on_interrupted(TrainInterrupted(step=state.step))
            raise
        state.wall_s = self._wall()
        return LoopOutcome(
            state=state,
            train_loss=self.train_loss,
            val_loss=self.val_loss,
            stopped_early=self.stopped_early,
            peak_memory_gb=mx.get_peak_memory() / 1e9,
        )

    def _steps(self) -> None:
        import mlx.core as mx

        a, state = self.args, self.state
        accum, total = a.grad_accumulation_steps, a.total_steps
        grad = None
        micro = state.step * accum
        nxt = self._prepare(micro) if state.step < total else None
        in_flight: Any = None  # the previous step's loss, still computing
        while state.step < total:
            w = self.window  # a new one after each report
            tic = time.perf_counter()
            for k in range(accum):
                assert nxt is not None
                inputs, targets, mask, real = nxt
                loss, toks, grad = self.trainer.step(inputs, targets, mask, grad, k == accum - 1)
                mx.async_eval(self.trainer.state, loss, toks, grad)
                micro += 1
                nxt = None if micro >= total * accum else self._prepare(micro)
                w.losses.append(loss)
                w.trained.append(toks)
                w.tokens += real
            state.step += 1
            w.steps += 1
            report = state.step % a.steps_per_report == 0 or state.step == total
            validate = state.step % a.steps_per_eval == 0 or state.step == total
            save = state.step % a.save_every == 0
            if report or validate or save:
                mx.eval(self.trainer.state, w.losses, w.trained)
                in_flight = None
            else:
                # No host sync on this step: wait only for the previous one, so one step is
                # queued behind the running one and the graph for the next builds meanwhile.
                if in_flight is not None:
                    mx.eval(in_flight)
                in_flight = loss
            w.time_s += time.perf_counter() - tic

            if report:
                self._report()
            if validate:
                self._validate()
            if save or self.stopped_early:
                self._checkpoint()
            if self.stopped_early:
                self.callback.on_early_stop(EarlyStopped(state.step, state.best_step))
                break

    def _prepare(self, micro: int) -> tuple[Any, Any, Any, int]:
        return self.trainer.to_device(self.batches.arrays(self.batches.indices(micro)))

    def _report(self) -> None:
        import mlx.core as mx

        w, state = self.window, self.state
        loss_sum = mx.stack(w.losses).sum()
        trained = mx.stack(w.trained).sum()
        counts = mx.array([float(w.tokens), float(len(w.losses))])
        if self.world.size() > 1:
            loss_sum = mx.distributed.all_sum(loss_sum, stream=mx.cpu)
            trained = mx.distributed.all_sum(trained, stream=mx.cpu)
            counts = mx.distributed.all_sum(counts, stream=mx.cpu)
        self.train_loss = _item(loss_sum) / _item(counts[1])
        state.trained_tokens += int(_item(trained))
        report = StepReport(
            step=state.step,
            total_steps=self.args.total_steps,
            train_loss=self.train_loss,
            lr=_item(self.optimizer.learning_rate),
            it_per_s=w.steps / w.time_s,
            tokens_per_s=int(_item(counts[0])) / w.time_s,
            trained_tokens_per_s=_item(trained) / w.time_s,
            trained_tokens=state.trained_tokens,
            peak_memory_gb=mx.get_peak_memory() / 1e9,
        )
        self.window = _Window()
        self.callback.on_step_report(report)

    def _validate(self) -> None:
        a, state = self.args, self.state
        self.val_loss = self.trainer.evaluate(self.valid, a.val_batch_size, a.val_batches)
        best = state.best_val
        # best/ is the lowest loss; min_delta only decides whether patience starts over
        if best is None or self.val_loss < best - a.early_stopping_min_delta:
            state.since_best = 0
        else:
            state.since_best += 1
        if best is None or self.val_loss < best:
            state.best_val, state.best_step = self.val_loss, state.step
        assert state.best_val is not None and state.best_step is not None
        self.callback.on_validation(
            ValidationReport(state.step, self.val_loss, state.best_val, state.best_step)
        )
        patience = a.early_stopping_patience
        if patience and state.since_best >= patience and state.step < a.total_steps:
            self.stopped_early = True

    def _checkpoint(self) -> None:
        import mlx.core as mx

        a, state = self.args, self.state
        if a.checkpoints is not None:
            path = a.checkpoints / f"step_{state.step:07d}"
            snapshot = replace(state, wall_s=self._wall())
            self.callback.on_checkpoint(CheckpointReached(state.step, path, snapshot))
        # The RNG (dropout) restarts from (seed, step) at every checkpoint, so a resumed run
        # draws exactly what the uninterrupted one drew.
        mx.random.seed(step_seed(a.seed, state.step))
        if self.world.size() > 1:  # keep ranks in step while rank 0 writes
            mx.eval(mx.distributed.all_sum(mx.array(1.0), stream=mx.cpu))

    def _wall(self) -> float:
        return self.wall_before + time.perf_counter() - self.wall_start


def measure(
    model: Any, optimizer: Any, batches: Batches, args: LoopArgs, world: Any
) -> tuple[float, float]:
    """(seconds per optimizer step, peak memory GB) from a few real steps; the model is thrown
    away afterwards (dry-run estimates)."""
    import mlx.core as mx

    trainer = TrainStep(model, optimizer, args, world)
    model.train()
    mx.reset_peak_memory()
    # The longest batch bounds memory; time the typical ones.
    longest = max(
        range(len(batches)), key=lambda i: len(batches.examples[batches.groups[i][-1]].tokens)
    )
    trainer.shape_like(batches)
    times = []
    for n, micro in enumerate([longest, 0, 1, 2]):
        idx = batches.groups[micro % len(batches)][batches.rank :: batches.world]
        inputs, targets, mask, _ = trainer.to_device(batches.arrays(idx))
        tic = time.perf_counter()
        out = trainer.step(inputs, targets, mask, None, True)
        mx.eval(trainer.state, out[0])
        if n >= 2:  # first two calls compile
            times.append(time.perf_counter() - tic)
    step_s = sum(times) / len(times) * args.grad_accumulation_steps
    return step_s, mx.get_peak_memory() / 1e9


def output_head(model: Any) -> Any | None:
    """`head(model, hidden)` with `model(x) == head(model, model.model(x))`, for mlx-lm's usual
    causal LM layout (a backbone `model.model`, then `lm_head` or the tied embedding), so the
    loss can project only the trained positions. None where a model adds more after its
    backbone (logit soft-capping, scaling) or is laid out otherwise: a short probe checks, and
    such a model keeps full logits rather than training a different loss."""
    import mlx.core as mx

    backbone = getattr(model, "model", None)
    embed = getattr(backbone, "embed_tokens", None)
    if backbone is None:
        return None
    if hasattr(model, "lm_head"):

        def head(m: Any, hidden: Any) -> Any:
            return m.lm_head(hidden)  # looked up per call: LoRA may wrap it later
    elif hasattr(embed, "as_linear"):

        def head(m: Any, hidden: Any) -> Any:
            return m.model.embed_tokens.as_linear(hidden)
    else:
        return None
    training = model.training
    model.eval()  # no dropout in the probe
    try:
        probe = mx.array([[1, 2, 3, 4, 5, 6, 7, 8]])
        full, split = model(probe), head(model, backbone(probe))
        same = full.shape == split.shape and bool(mx.allclose(full, split, atol=1e-4).item())
    except (TypeError, ValueError, AttributeError):
        same = False
    finally:
        model.train(training)
    return head if same else None


def step_seed(seed: int, step: int) -> int:
    return (seed * 1_000_003 + step) % (2**32)


def _item(x: Any) -> float:
    return float(x.item())
