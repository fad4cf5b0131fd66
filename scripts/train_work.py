"""The work each side of `bench --what train` does over its timed steps, counted from both
sides' batching code without training: trained (answer) tokens and padded positions per step.

mlxtune: `train.data.Batches` (rows sorted by token length, padded to a multiple of 8 on the
CPU). Raw mlx-lm 0.32: `iterate_batches` as `mlx_lm lora` runs it (numpy seeded with the seed,
rows "sorted" by `len()` of the raw record, padded to 32 + 1, and a loss mask that also takes
each row's first padding position). It shows why a few timed steps compare different work and
how many steps make it equal (docs/benchmarks.md, issue 18). mlx-lm's order is exact for the
first epoch only: its validation pass draws from the same numpy RNG, which shifts the later
epochs' shuffles (the bench's own `timed_tokens` is the measured count).

    python scripts/train_work.py --model build/bench/models/tiny --data build/bench/data \\
        --window 3:15 --window 5:120
"""

from __future__ import annotations

import argparse
import types
from pathlib import Path

import numpy as np

import mlxtune  # noqa: F401  (OpenBLAS before mlx, as every entry point)


def mlx_lm_steps(
    model: str, data: str, batch: int, seed: int, steps: int, max_len: int
) -> list[tuple[int, int, int]]:
    """(real trained tokens, tokens mlx-lm counts, padded width) per step."""
    from mlx_lm.tuner.datasets import CacheDataset, load_dataset
    from mlx_lm.utils import load

    _, tok = load(model)
    args = types.SimpleNamespace(data=data, train=True, test=False, mask_prompt=True)
    args.hf_dataset = None
    train, _, _ = load_dataset(args, tok)
    ds = CacheDataset(train)
    order = sorted(range(len(ds)), key=ds.itemlen)  # what iterate_batches sorts by
    groups = [order[i : i + batch] for i in range(0, len(order) - batch + 1, batch)]
    np.random.seed(seed)  # lora.run seeds numpy; iterate_batches draws one permutation an epoch
    out: list[tuple[int, int, int]] = []
    while len(out) < steps:
        for g in np.random.permutation(len(groups)):
            rows = [ds[j] for j in groups[g]]
            longest = max(len(t) for t, _ in rows)
            width = min(1 + 32 * ((longest + 31) // 32), max_len) - 1
            real = sum(len(t) - off for t, off in rows)
            out.append((real, real + len(rows), width))
    return out[:steps]


def mlxtune_steps(
    model: str, data: str, batch: int, seed: int, steps: int, max_len: int
) -> list[tuple[int, int, int]]:
    from mlx_lm.utils import load

    from mlxtune.formats import read_records, resolve_template
    from mlxtune.train.data import Batches, tokenize

    _, tok = load(model)
    resolve_template(tok)
    rows = [r for _, r in read_records(Path(data) / "train.jsonl")]
    examples, _ = tokenize(rows, tok, mask_prompt=True, max_seq_length=max_len)
    batches = Batches(examples, batch, seed=seed)
    out = []
    for micro in range(steps):
        _, _, mask, _ = batches.arrays(batches.indices(micro))
        out.append((int(mask.sum()), int(mask.sum()), mask.shape[1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument(
        "--window", action="append", default=[], help="WARMUP:STEPS (repeatable); default 5:120"
    )
    a = ap.parse_args()
    windows = [tuple(int(x) for x in w.split(":")) for w in a.window or ["5:120"]]
    total = max(w + n for w, n in windows)
    sides = {
        "mlx-lm": mlx_lm_steps(a.model, a.data, a.batch_size, a.seed, total, a.max_seq_length),
        "mlxtune": mlxtune_steps(a.model, a.data, a.batch_size, a.seed, total, a.max_seq_length),
    }
    for warm, n in windows:
        print(f"timed steps {warm + 1}-{warm + n}:")
        real = {}
        for side, per_step in sides.items():
            timed = per_step[warm : warm + n]
            real[side] = sum(r for r, _, _ in timed)
            counted = sum(c for _, c, _ in timed)
            padded = a.batch_size * sum(w for _, _, w in timed)
            widths = sorted({w for _, _, w in timed})
            print(
                f"  {side:8s} trained tokens {real[side]:>7,} (counted {counted:,}), "
                f"padded positions {padded:,}, widths {widths}"
            )
        print(f"  mlxtune / mlx-lm trained tokens: {real['mlxtune'] / real['mlx-lm']:.3f}")


if __name__ == "__main__":
    main()
