"""train's token cache: the encoding of a split file kept beside it, read back only for the
same file, tokenizer + template and mask, and equal to tokenizing afresh."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mlxtune.formats import read_records, resolve_template
from mlxtune.train.data import CACHE_DIR, TokenCache, tokenize


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Path) -> object:
    from mlx_lm import load

    _, tok = load(str(tiny_model))
    resolve_template(tok)
    return tok


def _split(domain_data: Path, tmp_path: Path) -> tuple[Path, list[dict[str, object]]]:
    path = tmp_path / "train.jsonl"
    shutil.copy(domain_data / "train.jsonl", path)
    return path, [r for _, r in read_records(path)]


def _pairs(examples: list) -> list[tuple[list[int], list[bool]]]:
    return [(e.tokens, e.mask) for e in examples]


def test_cached_encoding_equals_a_fresh_one(
    tokenizer: object, domain_data: Path, tmp_path: Path
) -> None:
    path, rows = _split(domain_data, tmp_path)
    fresh, cut = tokenize(rows, tokenizer, mask_prompt=True, max_seq_length=24)
    first, cut1 = tokenize(rows, tokenizer, mask_prompt=True, max_seq_length=24, source=path)
    assert list((tmp_path / CACHE_DIR).glob("train.jsonl.*.npz"))  # written
    again, cut2 = tokenize(rows, tokenizer, mask_prompt=True, max_seq_length=24, source=path)
    assert cut and cut == cut1 == cut2  # truncation happens after the cache, per run
    assert _pairs(fresh) == _pairs(first) == _pairs(again)


def test_the_cache_is_what_is_read(tokenizer: object, domain_data: Path, tmp_path: Path) -> None:
    path, rows = _split(domain_data, tmp_path)
    tokenize(rows, tokenizer, mask_prompt=True, max_seq_length=256, source=path)
    cache = TokenCache.for_file(path, tokenizer, True)
    assert cache is not None
    with np.load(cache.path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["tokens"][0] = 7  # a marker a fresh encoding would not produce
    with open(cache.path, "wb") as f:
        np.savez(f, **arrays)
    got, _ = tokenize(rows, tokenizer, mask_prompt=True, max_seq_length=256, source=path)
    assert got[0].tokens[0] == 7


def test_another_file_or_mask_is_another_key(
    tokenizer: object, domain_data: Path, tmp_path: Path
) -> None:
    path, rows = _split(domain_data, tmp_path)
    masked = TokenCache.for_file(path, tokenizer, True)
    assert masked is not None
    assert masked != TokenCache.for_file(path, tokenizer, False)
    tokenize(rows, tokenizer, mask_prompt=True, max_seq_length=256, source=path)
    with path.open("a") as f:  # the file changes: its old encoding is not read, and goes
        f.write(path.read_text().splitlines()[0] + "\n")
    rows = [r for _, r in read_records(path)]
    got, _ = tokenize(rows, tokenizer, mask_prompt=True, max_seq_length=256, source=path)
    fresh, _ = tokenize(rows, tokenizer, mask_prompt=True, max_seq_length=256)
    assert _pairs(got) == _pairs(fresh)
    assert not masked.path.exists()
    assert len(list((tmp_path / CACHE_DIR).glob("train.jsonl.*.npz"))) == 1


def test_an_unwritable_data_dir_still_trains(
    tokenizer: object, domain_data: Path, tmp_path: Path
) -> None:
    path, rows = _split(domain_data, tmp_path)
    (tmp_path / CACHE_DIR).write_text("a file where the cache directory would go")
    got, _ = tokenize(rows, tokenizer, mask_prompt=True, max_seq_length=256, source=path)
    fresh, _ = tokenize(rows, tokenizer, mask_prompt=True, max_seq_length=256)
    assert _pairs(got) == _pairs(fresh)
