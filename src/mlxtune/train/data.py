"""Training data for `mlxtune train`: tokenise, check, batch and (optionally) pack.

Batch order is a pure function of (seed, micro-step): resuming at step N replays exactly the
batches an uninterrupted run would have seen, with no iterator state to save.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlxtune.formats import encode_for_training_many, tokenizer_fingerprint
from mlxtune.io import atomic_open, sha256_file

PAD_TO = 8  # pad lengths to a multiple of 8 on the CPU: little wasted compute
# On a GPU every new batch width retraces the compiled step and, on a cold kernel cache, JITs
# its kernels again; mlx-lm pads to 32 there. On the bench data 8 gives 5 widths, 32 gives 2.
GPU_PAD_TO = 32


def pad_multiple() -> int:
    """The padding granularity for this process's default device."""
    import mlx.core as mx

    return GPU_PAD_TO if mx.default_device().type == mx.DeviceType.gpu else PAD_TO


@dataclass
class Example:
    tokens: list[int]
    mask: list[bool]  # True where the loss is taken (mask[i] refers to tokens[i])


def tokenize(
    rows: list[dict[str, Any]],
    tokenizer: Any,
    *,
    mask_prompt: bool,
    max_seq_length: int,
    source: Path | None = None,
) -> tuple[list[Example], list[int]]:
    """Examples (truncated to max_seq_length + 1 tokens: inputs and shifted targets) and the
    indexes of the rows that were truncated. With `source` (the file `rows` were read from)
    the encoding is cached beside it (`TokenCache`), so the next run on the same file,
    tokenizer, template and mask skips rendering and tokenizing."""
    out: list[Example] = []
    truncated: list[int] = []
    cache = TokenCache.for_file(source, tokenizer, mask_prompt) if source else None
    encoded = cache.read(len(rows)) if cache else None
    if encoded is None:
        encoded = encode_for_training_many(tokenizer, rows, mask_prompt=mask_prompt)
        if cache:
            cache.write(encoded)
    for i, (tokens, mask) in enumerate(encoded):
        if len(tokens) > max_seq_length + 1:
            truncated.append(i)
            tokens, mask = tokens[: max_seq_length + 1], mask[: max_seq_length + 1]
        out.append(Example(tokens, mask))
    return out, truncated


CACHE_DIR = ".mlxtune-cache"  # in data.dir, beside the split files it caches
_CACHE_FORMAT = 1  # bump when encode_for_training's output changes for the same inputs


@dataclass(frozen=True)
class TokenCache:
    """One split file's training encoding (every row's tokens and loss mask, untruncated) in
    `data.dir/.mlxtune-cache/<file>.<key>.npz`. The key is the file's sha256, the tokenizer +
    chat template fingerprint (`formats.tokenizer_fingerprint`, the one token_lengths.json
    uses), mask_prompt and the format: any change is a new key, so a stale cache is never read.
    A directory we cannot write is no error: the run tokenizes, as without a cache."""

    path: Path

    @classmethod
    def for_file(cls, source: Path, tokenizer: Any, mask_prompt: bool) -> TokenCache | None:
        import hashlib

        fingerprint = tokenizer_fingerprint(tokenizer)
        if fingerprint is None or not source.is_file():
            return None
        key = hashlib.sha256(
            f"{sha256_file(source)}:{fingerprint}:{mask_prompt}:{_CACHE_FORMAT}".encode()
        ).hexdigest()[:20]
        return cls(source.parent / CACHE_DIR / f"{source.name}.{key}.npz")

    def read(self, n_rows: int) -> list[tuple[list[int], list[bool]]] | None:
        if not self.path.is_file():
            return None
        try:
            with np.load(self.path) as z:
                tokens, mask, ends = z["tokens"], z["mask"], z["ends"]
        except (OSError, ValueError, KeyError):
            return None
        if len(ends) != n_rows:
            return None
        starts = [0, *ends[:-1].tolist()]
        return [
            (tokens[a:b].tolist(), mask[a:b].tolist())
            for a, b in zip(starts, ends.tolist(), strict=True)
        ]

    def write(self, encoded: list[tuple[list[int], list[bool]]]) -> None:
        lengths = [len(t) for t, _ in encoded]
        total = sum(lengths)
        tokens = np.fromiter((x for t, _ in encoded for x in t), np.int32, total)
        mask = np.fromiter((x for _, m in encoded for x in m), np.bool_, total)
        ends = np.cumsum(lengths, dtype=np.int64)
        with contextlib.suppress(OSError):
            stale = self.path.parent.glob(self.path.name.rsplit(".", 2)[0] + ".*.npz")
            for old in stale:  # earlier encodings of this file name
                old.unlink(missing_ok=True)
            with atomic_open(self.path, "wb") as f:
                np.savez(f, tokens=tokens, mask=mask, ends=ends)


def pack(examples: list[Example], max_seq_length: int) -> list[Example]:
    """Concatenate examples (longest first, first fit) into rows of <= max_seq_length + 1
    tokens. Later examples in a row attend to earlier ones (no block-diagonal mask: mlx-lm
    models take one causal mask); the loss of each example's first token is masked anyway
    because it is the prompt (or masked explicitly for text records)."""
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].tokens))
    bins: list[Example] = []
    limit = max_seq_length + 1
    for i in order:
        ex = examples[i]
        first = Example(ex.tokens, [False, *ex.mask[1:]])  # never predict across a seam
        for b in bins:
            if len(b.tokens) + len(ex.tokens) <= limit:
                b.tokens = b.tokens + first.tokens
                b.mask = b.mask + first.mask
                break
        else:
            bins.append(Example(list(ex.tokens), list(ex.mask)))
    return bins


class Batches:
    """Length-bucketed batches (like mlx-lm), shuffled per epoch from the seed alone."""

    def __init__(
        self,
        examples: list[Example],
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world: int = 1,
        pad_to: int = PAD_TO,
    ) -> None:
        order = sorted(range(len(examples)), key=lambda i: len(examples[i].tokens))
        self.examples = examples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world = world
        self.pad_to = pad_to
        self.groups = [
            order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)
        ]
        self._perm_epoch = -1
        self._perm: np.ndarray = np.arange(len(self.groups))

    def __len__(self) -> int:
        return len(self.groups)

    def indices(self, micro_step: int) -> list[int]:
        """The example indices this rank trains on at `micro_step` (0-based)."""
        epoch, pos = divmod(micro_step, len(self.groups))
        if epoch != self._perm_epoch:
            self._perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.groups))
            self._perm_epoch = epoch
        group = self.groups[int(self._perm[pos])]
        return group[self.rank :: self.world]

    def arrays(self, idx: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(inputs, targets, loss mask, real tokens) as numpy, padded to a multiple of pad_to."""
        return collate([self.examples[i] for i in idx], self.pad_to)

    def trained_by_width(self, parts: int = 1) -> dict[int, int]:
        """The most trained positions any of this rank's batches holds, per padded width (in
        any one of `parts` row ranges, `row_slices`, when the step splits its batches): the
        loss takes that many positions at that width (`trained_positions`), so the compiled
        step sees one shape per width, not one per count (each new shape is a new trace)."""
        most: dict[int, int] = {}
        for group in self.groups:
            rows = [self.examples[i] for i in group[self.rank :: self.world]]
            width = padded_width(max(len(e.tokens) for e in rows) - 1, self.pad_to)
            for part in row_slices(len(rows), parts):
                trained = sum(sum(e.mask[1:]) for e in rows[part])
                most[width] = max(most.get(width, 0), trained)
        return most

    def tokens_per_epoch(self) -> tuple[int, int]:
        """(all tokens, trained tokens) in one pass over the batches."""
        used = [i for g in self.groups for i in g]
        return (
            sum(len(self.examples[i].tokens) - 1 for i in used),
            sum(sum(self.examples[i].mask[1:]) for i in used),
        )


def collate(
    batch: list[Example], pad_to: int = PAD_TO
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    width = padded_width(max(len(e.tokens) for e in batch) - 1, pad_to)
    inputs = np.zeros((len(batch), width), np.int32)
    targets = np.zeros((len(batch), width), np.int32)
    mask = np.zeros((len(batch), width), np.float32)
    real = 0
    for j, e in enumerate(batch):
        n = len(e.tokens) - 1
        inputs[j, :n] = e.tokens[:-1]
        targets[j, :n] = e.tokens[1:]
        mask[j, :n] = e.mask[1:]
        real += n
    return inputs, targets, mask, real


def row_slices(rows: int, parts: int) -> list[slice]:
    """`rows` cut into `parts` contiguous ranges (fewer when there are fewer rows), as even as
    can be, the first ones a row longer."""
    k = max(1, min(parts, rows))
    base, extra = divmod(rows, k)
    bounds = [0]
    for i in range(k):
        bounds.append(bounds[-1] + base + (i < extra))
    return [slice(a, b) for a, b in itertools.pairwise(bounds)]


def padded_width(length: int, pad_to: int) -> int:
    return max(pad_to, pad_to * ((length + pad_to - 1) // pad_to))


def trained_positions(
    mask: np.ndarray, pad_to: int = PAD_TO, at_least: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(flat indexes of the positions a batch's loss is taken at, their weights), padded with
    index 0 and weight 0 to `at_least` (`Batches.trained_by_width`) and a multiple of `pad_to`,
    so the step sees few distinct shapes."""
    flat = mask.reshape(-1)
    picked = np.flatnonzero(flat)
    n = padded_width(max(len(picked), at_least), pad_to)
    positions = np.zeros(n, np.int32)
    weights = np.zeros(n, np.float32)
    positions[: len(picked)] = picked
    weights[: len(picked)] = flat[picked]
    return positions, weights
