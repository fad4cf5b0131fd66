"""transformers' import table kept on disk (`runtime.widen_folder_scan_cache`): a process
after the first reads the scan of transformers/models instead of reading ~1,700 files, and
gets the same table a fresh scan gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Prints how many folders this process scanned, then what transformers' two lazy modules built
# from the table (`transformers` and `transformers.models`: which module holds each name, and
# each name missing a backend), in a canonical form.
_SCRIPT = """
import json, sys
import mlxtune
from transformers import AutoTokenizer  # models/__init__: the second request for the table
from transformers.utils import import_utils

scanned = import_utils.create_import_structure_from_path.cache_info().misses
lazy = {}
for name in ("transformers", "transformers.models"):
    module = sys.modules[name]
    lazy[name] = [
        sorted(module._class_to_module.items()),
        sorted(module._modules),
        sorted((k, sorted(v)) for k, v in module._object_missing_backend.items()),
    ]
print(json.dumps({"scanned": scanned, "table": lazy, "tokenizer": AutoTokenizer.__name__}))
"""


def _run(tmp_path: Path, cache: str) -> dict[str, object]:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(_SCRIPT))
    env = {**os.environ, "PYTHONPATH": SRC, "MLXTUNE_CACHE_DIR": cache}
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_the_kept_table_is_the_scanned_one_without_the_scan(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    fresh = _run(tmp_path, "0")  # nothing kept: transformers scans as it always did
    first = _run(tmp_path, str(cache))  # scans, then keeps
    kept = sorted(cache.glob("transformers-imports-*.json"))
    assert len(kept) == 2  # the prefixed table (transformers/__init__) and models/__init__'s
    second = _run(tmp_path, str(cache))
    assert fresh["scanned"] > 500 and first["scanned"] > 500  # ~560 model folders
    assert second["scanned"] < 20  # read from disk: only what AutoTokenizer itself imports
    assert second["table"] == fresh["table"] == first["table"]
    assert second["tokenizer"] == "AutoTokenizer"
    assert sorted(cache.glob("*.tmp")) == []


def test_a_corrupt_kept_table_is_scanned_again_and_replaced(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    reference = _run(tmp_path, str(cache))
    for kept in cache.glob("transformers-imports-*.json"):
        kept.write_text('[["torch"], {"half a')
    again = _run(tmp_path, str(cache))
    assert again["scanned"] > 500
    assert again["table"] == reference["table"]
    for kept in cache.glob("transformers-imports-*.json"):
        json.loads(kept.read_text())  # rewritten whole


def test_an_unwritable_cache_folder_only_costs_the_scan(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    result = _run(tmp_path, str(blocker / "cache"))
    assert result["scanned"] > 500
    assert result["tokenizer"] == "AutoTokenizer"
