"""`mlxtune prepare`: raw sources -> cleaned, deduplicated, split train/valid/test.jsonl.

Steps, each counted in manifest.json: read every source (format detected from every row,
JSON Schema per row, role order) -> clean (NFKC, whitespace) -> drop empty turns -> minimum
answer length -> exact and normalised duplicates -> quality score (optional) -> token length
with the real tokenizer -> grouped, stratified split -> augmentation of the training split
(optional) -> atomic write. Bad rows stop the run with every problem listed;
filtered rows are counted, never dropped silently.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune import __version__, formats
from mlxtune.data import records as rec
from mlxtune.data.sources import read_source, source_type
from mlxtune.errors import BadData, ConfigError, MlxtuneError, UsageError
from mlxtune.io import atomic_write_json, atomic_write_text, jsonl_line, sha256_file
from mlxtune.runtime import gc_paused
from mlxtune.vlm.data import ImageLedger, flatten_image_parts, image_group, link_images

if TYPE_CHECKING:
    from mlxtune.config import Config, ModelConfig, SourceConfig
    from mlxtune.data.augment import AugmentReport
    from mlxtune.data.quality import QualityReport
    from mlxtune.data.sources import Row

SPLITS = ("train", "valid", "test")
MAX_LISTED = 20  # problems listed before "... and N more"
Progress = Callable[[str], None]


@dataclass
class Filter:
    name: str
    before: int
    after: int
    examples: list[str] = field(default_factory=list)  # first few dropped rows, path:line

    @property
    def dropped(self) -> int:
        return self.before - self.after

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "before": self.before,
            "after": self.after,
            "dropped": self.dropped,
            "examples": self.examples,
        }


@dataclass
class Dropped:
    """A record the quality threshold dropped, with the factor values behind its score."""

    where: str
    record: dict[str, Any]
    score: float
    factors: dict[str, float]


@dataclass
class PrepareResult:
    out_dir: Path
    manifest: dict[str, Any]
    filters: list[Filter]
    splits: dict[str, int]
    categories: dict[str, dict[str, int]]
    wall_s: float
    warnings: list[str] = field(default_factory=list)
    quality_dropped: list[Dropped] = field(default_factory=list)  # for `prepare --explain N`

    @property
    def read(self) -> int:
        return int(self.manifest["counts"]["read"])

    @property
    def written(self) -> int:
        return int(self.manifest["counts"]["written"])


@dataclass
class _Item:
    record: dict[str, Any]
    where: rec.Located
    tokens: int = 0
    question: str | None = None  # rec.question_key, once: splitting and the manifest ask
    line: str | None = None  # its JSONL line, made while the tokenizer threads finish


@dataclass
class _Funnel:
    """The rows as they pass each step, and what each step did to them: the manifest's
    counts come from here, so no row leaves without being counted."""

    items: list[_Item]
    filters: list[Filter] = field(default_factory=list)
    quality: QualityReport | None = None
    quality_dropped: list[Dropped] = field(default_factory=list)
    kept: int = 0  # rows left before augmentation adds any
    augment: AugmentReport | None = None
    split_rows: dict[str, list[_Item]] = field(default_factory=dict)

    def apply(self, name: str, keep: Callable[[_Item], bool]) -> None:
        kept: list[_Item] = []
        dropped: list[_Item] = []
        for item in self.items:
            (kept if keep(item) else dropped).append(item)
        self.filters.append(
            Filter(name, len(self.items), len(kept), [str(d.where) for d in dropped[:10]])
        )
        self.items = kept


def prepare(cfg: Config, *, force: bool = False, progress: Progress | None = None) -> PrepareResult:
    """Run the whole preparation for `cfg` and write `prepare.out_dir` (default `data.dir`):
    read -> clean -> quality -> token lengths -> split -> augment -> write."""
    # Rows are trees of dicts and lists that reference counting frees; the cyclic collector's
    # full passes over 100k live records cost ~3 s of CPU and free nothing. Paused to the end:
    # re-enabled before the split, its first full pass would come right then.
    with gc_paused():
        return _prepare(cfg, force, progress or (lambda _msg: None), time.perf_counter())


def _prepare(cfg: Config, force: bool, say: Progress, started: float) -> PrepareResult:
    pc = cfg.prepare
    out_dir = Path(pc.out_dir or cfg.data.dir)
    _check_inputs(cfg, out_dir, force)

    say("loading tokenizer")
    tokenizer, template, origin = rec.load_tokenizer(cfg.model)

    ledger = ImageLedger()
    # token lengths are measured in worker threads from the moment each row is read
    with formats.TrainingLengths(tokenizer) as measured:
        items, sources_meta, kind = _read_all(cfg, say, ledger, measured)
        funnel = _Funnel(items)
        say("cleaning")
        _clean(funnel, cfg)
        if pc.quality is not None:
            _score_quality(funnel, cfg, say)
        _while_tokenizing(funnel, pc.group_by)
        say(f"counting tokens of {len(funnel.items)} rows")
        for item, n in zip(items, measured.lengths(), strict=True):
            item.tokens = n
    _drop_long(funnel, cfg)
    say("splitting")
    _split_funnel(funnel, cfg, out_dir)
    if pc.augment is not None:
        say(f"augmenting {', '.join(pc.augment.splits)} ({pc.augment.method})")
        funnel.split_rows, funnel.augment = _augment(cfg, tokenizer, funnel.split_rows)
        funnel.items = [it for rows in funnel.split_rows.values() for it in rows]
    # a split asked for with ratio 0 is not written: an empty file is bad data
    ratios = _ratios(cfg)
    funnel.split_rows = {s: rows for s, rows in funnel.split_rows.items() if rows or ratios[s] > 0}

    manifest = _manifest(cfg, funnel, sources_meta, kind)
    manifest["template"] = {"fingerprint": formats.template_fingerprint(template), "origin": origin}
    manifest["tokenizer"] = {
        "path": cfg.model.path,
        "class": type(formats._hf(tokenizer)).__name__,
        "vocab_size": len(formats._hf(tokenizer)),
    }
    _add_token_lengths(manifest, funnel)
    manifest["files"] = {}
    _add_optional_sections(manifest, funnel, ledger)

    say(f"writing {out_dir}")
    _write(out_dir, funnel.split_rows, manifest, force, (tokenizer, template, cfg.model))
    return PrepareResult(
        out_dir=out_dir,
        manifest=manifest,
        filters=funnel.filters,
        splits=manifest["splits"],
        categories=manifest["categories"],
        wall_s=time.perf_counter() - started,
        warnings=_batch_warnings(cfg, funnel.split_rows),
        quality_dropped=funnel.quality_dropped,
    )


def _while_tokenizing(funnel: _Funnel, group_by: str | None) -> None:
    """Work of the split and the write that does not wait for token lengths, done while the
    tokenizer threads finish rather than after them, on a core they leave idle: each row's
    question key and JSONL line (records do not change from here on; rows augmentation adds
    are serialised when written)."""
    for item in funnel.items:
        if group_by is None:
            _group(item, None)
        item.line = jsonl_line(item.record)


def _check_inputs(cfg: Config, out_dir: Path, force: bool) -> None:
    """What can fail before any reading: no sources, an output in the way, a graph source
    that cannot connect (driver installed, credentials set, templates parse)."""
    if not cfg.prepare.sources:
        raise ConfigError("prepare.sources: no sources configured")
    _check_out_dir(out_dir, force)
    for src in cfg.prepare.sources:
        if source_type(src) == "neo4j":
            from mlxtune.data import graph

            graph.check(src)


def _clean(funnel: _Funnel, cfg: Config) -> None:
    """Drop rows with empty turns, short answers and (as configured) duplicates."""
    pc = cfg.prepare
    funnel.apply(
        "empty_turns", lambda it: not rec.empty_turns(it.record) and bool(rec.answer(it.record))
    )
    funnel.apply("min_answer_chars", lambda it: len(rec.answer(it.record)) >= pc.min_answer_chars)
    if pc.dedup in ("exact", "normalized"):
        funnel.apply("duplicates_exact", _first_of(rec.exact_key))
    if pc.dedup == "normalized":
        funnel.apply("duplicates_normalized", _first_of(rec.normalized_key))


def _score_quality(funnel: _Funnel, cfg: Config, say: Progress) -> None:
    """Score every row, keep the dropped ones with their factors for `prepare --explain`,
    then drop those under the threshold."""
    from mlxtune.data.quality import score_all

    qc = cfg.prepare.quality
    assert qc is not None
    say(f"scoring the quality of {len(funnel.items)} rows")
    scored, funnel.quality = score_all(qc, [it.record for it in funnel.items])
    for item, sc in zip(funnel.items, scored, strict=True):
        item.record["quality"] = sc.score
        if sc.score < qc.threshold:
            funnel.quality_dropped.append(
                Dropped(str(item.where), item.record, sc.score, sc.factors)
            )
    threshold = qc.threshold
    funnel.apply("quality", lambda it: it.record["quality"] >= threshold)


def _drop_long(funnel: _Funnel, cfg: Config) -> None:
    """Drop rows over max_seq_length (their lengths measured with the real tokenizer and
    template) when asked. Nothing left is bad data."""
    max_len = cfg.train.max_seq_length
    if cfg.prepare.drop_long:
        funnel.apply("max_seq_length", lambda it: it.tokens <= max_len)
    if not funnel.items:
        raise BadData(f"{cfg.prepare.sources[0].path}: no rows left after filtering")


def _ratios(cfg: Config) -> dict[str, float]:
    return {"train": 1.0, "valid": cfg.prepare.valid_ratio, "test": cfg.prepare.test_ratio}


def _split_funnel(funnel: _Funnel, cfg: Config, out_dir: Path) -> None:
    """Assign rows to splits; a split asked for that ends up empty is bad data."""
    pc = cfg.prepare
    items = funnel.items
    assigned = _split(items, cfg)
    split_rows = {s: [it for it in items if assigned[id(it)] == s] for s in SPLITS}
    ratios = _ratios(cfg)
    empty = [s for s in SPLITS if not split_rows[s] and ratios[s] > 0]
    if empty:
        groups = len({_group(it, pc.group_by) for it in items})
        raise BadData(
            f"{out_dir / (empty[0] + '.jsonl')}: empty after filtering ({len(items)} rows in "
            f"{groups} group(s) left for {', '.join(empty)}); add data or lower the ratios"
        )
    funnel.split_rows = split_rows
    funnel.kept = len(items)


def _manifest(
    cfg: Config, funnel: _Funnel, sources_meta: list[dict[str, Any]], kind: str
) -> dict[str, Any]:
    """manifest.json's counts and settings: what was read, what each step dropped, what
    each split holds, and the knobs that decided it."""
    pc = cfg.prepare
    split_rows = funnel.split_rows
    categories: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(SPLITS, 0))
    for s, rows in split_rows.items():
        for it in rows:
            categories[str(it.record.get("category", ""))][s] += 1
    group_counts = {
        s: len({_group(it, pc.group_by) for it in rows if not it.record.get("augmented")})
        for s, rows in split_rows.items()
    }
    quality_report, augment_report = funnel.quality, funnel.augment
    filters = funnel.filters
    return {
        "schema_version": 1,
        "mlxtune_version": __version__,
        "sources": sources_meta,
        "format": kind,
        "system_prompt": cfg.data.system_prompt,
        "counts": {"read": filters[0].before, "written": len(funnel.items)},
        "funnel": {
            "extracted": filters[0].before,
            "filtered": quality_report.kept + quality_report.dropped
            if quality_report
            else funnel.kept,
            "kept_by_quality": quality_report.kept if quality_report else None,
            "kept": funnel.kept,
            "augmented": sum(augment_report.added.values()) if augment_report else 0,
            "splits": {s: len(rows) for s, rows in split_rows.items()},
        },
        "filters": [f.to_dict() for f in filters],
        "splits": {s: len(split_rows.get(s, [])) for s in SPLITS},
        "groups": group_counts,
        "categories": {k: categories[k] for k in sorted(categories)},
        "seed": pc.seed,
        "valid_ratio": pc.valid_ratio,
        "test_ratio": pc.test_ratio,
        "group_by": pc.group_by or "question",
        "stratify": pc.stratify,
        "dedup": pc.dedup,
        "min_answer_chars": pc.min_answer_chars,
        "max_seq_length": cfg.train.max_seq_length,
    }


def _add_token_lengths(manifest: dict[str, Any], funnel: _Funnel) -> None:
    manifest["token_lengths"] = {
        s: rec.length_stats([it.tokens for it in rows]) for s, rows in funnel.split_rows.items()
    } | {"all": rec.length_stats([it.tokens for it in funnel.items])}


def _add_optional_sections(manifest: dict[str, Any], funnel: _Funnel, ledger: ImageLedger) -> None:
    """Sections only some runs have: quality, augmentation, graph provenance, images."""
    if funnel.quality is not None:
        manifest["quality"] = funnel.quality.to_dict()
    if funnel.augment is not None:
        manifest["augment"] = funnel.augment.to_dict()
    provenance = {
        s: [str(it.record["source"]) for it in rows if _is_graph_provenance(it.record)]
        for s, rows in funnel.split_rows.items()
    }
    if any(provenance.values()):
        manifest["provenance"] = provenance
    if ledger.linked:
        manifest["images"] = ledger.manifest()


def _batch_warnings(cfg: Config, split_rows: dict[str, list[_Item]]) -> list[str]:
    """train/valid smaller than a batch: written anyway (a warning, not bad data)."""
    return [
        f"{split}.jsonl: {len(split_rows.get(split, []))} rows < train.batch_size "
        f"{cfg.train.batch_size}"
        " (mlx-lm will refuse to train on it)"
        for split in ("train", "valid")
        if len(split_rows.get(split, [])) < cfg.train.batch_size
    ]


def _is_graph_provenance(record: dict[str, Any]) -> bool:
    return str(record.get("source", "")).startswith("neo4j:") and not record.get("augmented")


def _augment(
    cfg: Config, tokenizer: Any, split_rows: dict[str, list[_Item]]
) -> tuple[dict[str, list[_Item]], Any]:
    """New phrasings for the splits in augment.splits; each new row goes right after its
    original, in the same split and group. Rows over max_seq_length are dropped and counted."""
    from mlxtune.data import augment as aug

    ac = cfg.prepare.augment
    assert ac is not None
    if ac.method == "model":
        paraphrase = aug.model_paraphrases(ac, cfg.model)
    else:
        paraphrase = aug.template_paraphrases(ac)
    where = {id(it.record): it.where for rows in split_rows.values() for it in rows}
    records = {s: [it.record for it in rows] for s, rows in split_rows.items()}
    augmented, report = aug.augment(records, ac, paraphrase)
    out: dict[str, list[_Item]] = {}
    for split, rows in augmented.items():
        new = [r for r in rows if id(r) not in where]
        lengths = dict(zip(map(id, new), formats.training_lengths(tokenizer, new), strict=True))
        old = {id(it.record): it for it in split_rows[split]}
        items: list[_Item] = []
        last = None
        for r in rows:
            if id(r) in old:
                last = old[id(r)]
                items.append(last)
                continue
            n = lengths[id(r)]
            if cfg.prepare.drop_long and n > cfg.train.max_seq_length:
                report.too_long_dropped += 1
                report.added[split] -= 1
                continue
            assert last is not None
            items.append(_Item(r, last.where, n))
        out[split] = items
    return out, report


def _check_out_dir(out_dir: Path, force: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"{out_dir}: exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not force:
        raise UsageError(
            f"{out_dir}: output directory exists and is not empty (use --force to replace it)"
        )


# ---------------------------------------------------------------------------------------------
# Reading


@dataclass
class _SourceContext:
    """What turning one source's rows into records needs to know about that source."""

    fmt: str
    auto: bool  # format detected per row: rows that matched none are already reported
    base: Path  # image paths are relative to this
    name: str  # the `source` field of its records
    system_prompt: str | None
    ledger: ImageLedger


def _read_all(
    cfg: Config, say: Progress, ledger: ImageLedger, measured: formats.TrainingLengths
) -> tuple[list[_Item], list[dict[str, Any]], str]:
    """Every source's rows as canonical records, plus each source's manifest entry and the
    shape of them all (chat or text); each record goes to `measured` as it is made. Bad
    rows from every source are listed together."""
    items: list[_Item] = []
    sources_meta = []
    problems: list[str] = []
    kinds: list[tuple[str, rec.Located]] = []
    for src in cfg.prepare.sources:
        kind = source_type(src)
        say(f"reading {src.path} ({kind})")
        rows = list(read_source(src))
        if not rows:
            raise BadData(f"{src.path}: no rows")
        fmt = _source_format(src, rows, problems) if src.format == "auto" else src.format
        ctx = _SourceContext(
            fmt=fmt,
            auto=src.format == "auto",
            base=Path(src.path).parent if kind != "hf" else Path.cwd(),
            name=Path(src.path).name,
            system_prompt=cfg.data.system_prompt,
            ledger=ledger,
        )
        n_before = len(items)
        for row in rows:
            item = _to_item(row, ctx, problems)
            if item is not None:
                items.append(item)
                measured.add(item.record)
                kinds.append(("text" if "text" in item.record else "chat", item.where))
        sources_meta.append(_source_meta(src, kind, fmt, len(items) - n_before, rows))
    if problems:
        more = len(problems) - MAX_LISTED
        listed = problems[:MAX_LISTED] + ([f"... and {more} more"] if more > 0 else [])
        raise BadData("\n".join(listed))
    shape, mixed = rec.majority_format(kinds)
    if mixed:
        raise BadData(
            f"{mixed[0]}: format: {mixed[1]} (sources must be all conversations or all text)"
        )
    return items, sources_meta, shape or "chat"


def _source_format(src: SourceConfig, rows: list[Row], problems: list[str]) -> str:
    """The one format of a source, detected from every row (not row 0, as mlx-lm does);
    rows matching none are problems, a minority format stops the run."""
    found = []
    for row in rows:
        detected = formats.detect_format(row.data)
        if detected is None:
            keys = ", ".join(map(str, row.data)) or "none"
            problems.append(f"{row.where}: format: matches no known format (keys: {keys})")
        else:
            found.append((detected, rec.Located(row.path, row.line)))
    fmt_name, mixed = rec.majority_format(found)
    if mixed:
        raise BadData(f"{mixed[0]}: format: {mixed[1]}")
    return fmt_name or "chat"


def _to_item(row: Row, ctx: _SourceContext, problems: list[str]) -> _Item | None:
    """One row as a clean canonical record, or None with its problems listed: schema,
    tools, images, role order."""
    where = rec.Located(row.path, row.line)
    row.data = flatten_image_parts(row.data)
    if formats.detect_format(row.data) is None and ctx.auto:
        return None  # already reported
    bad = rec.schema_problems(row.data, ctx.fmt)
    if bad:
        problems.extend(f"{where}: {f}: {m}" for f, m in bad)
        return None
    record = formats.to_canonical(row.data, ctx.fmt, system_prompt=ctx.system_prompt)
    tool_bad = formats.tool_problems(record)
    if tool_bad:
        problems.extend(f"{where}: {f}: {m}" for f, m in tool_bad)
        return None
    record = rec.clean_record(record)
    bad_images = link_images(record, ctx.base, ctx.ledger)
    if bad_images:
        problems.extend(f"{where}: {f}: {m}" for f, m in bad_images)
        return None
    if "messages" in record:
        # an empty system message is noise, not a reason to drop the row
        record["messages"] = [
            m for m in record["messages"] if m["role"] != "system" or m["content"]
        ]
        order = formats.role_order_problem(record["messages"])
        if order:
            field_name, _, msg = order.partition(" is ")
            if not field_name.startswith("messages["):
                field_name, msg = "messages", order
            problems.append(f"{where}: {field_name}: {msg}")
            return None
    record.setdefault("source", ctx.name)
    return _Item(record, where)


def _source_meta(
    src: SourceConfig, kind: str, fmt: str, rows_kept: int, rows: list[Row]
) -> dict[str, Any]:
    """A source's entry in manifest.json: where it came from and the hash that pins it."""
    meta: dict[str, Any] = {
        "path": src.path,
        "type": kind,
        "format": fmt,
        "rows": rows_kept,
        "sha256": _sha256(Path(src.path)),
        **({"query": src.query} if src.query else {}),
        **({"columns": src.columns} if src.columns else {}),
    }
    if kind == "neo4j":
        from mlxtune.data.graph import rows_sha256

        # the graph has no file to hash: hash what the query returned
        meta.update(sha256=rows_sha256(rows), uri=src.uri, database=src.database)
        meta.update({k: v for k, v in (("params", src.params), ("template", src.template)) if v})
    return meta


def _sha256(path: Path) -> str | None:
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():  # a saved dataset: hash its files in order
        h = hashlib.sha256()
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(str(f.relative_to(path)).encode())
            h.update(sha256_file(f).encode())
        return h.hexdigest()
    return None  # a hub id: the revision identifies it


def _first_of(key: Callable[[dict[str, Any]], str]) -> Callable[[_Item], bool]:
    seen: set[str] = set()

    def keep(item: _Item) -> bool:
        k = key(item.record)
        if k in seen:
            return False
        seen.add(k)
        return True

    return keep


# ---------------------------------------------------------------------------------------------
# Splitting


def _group(item: _Item, group_by: str | None) -> str:
    if group_by is None:  # records with images group by image: one image, one split
        group = image_group(item.record)
        if group:
            return group
        if item.question is None:
            item.question = rec.question_key(item.record)
        return item.question
    value = item.record.get(group_by)
    if value is None:
        raise BadData(f"{item.where}: {group_by}: missing (prepare.group_by needs it)")
    return str(value)


def _split(items: list[_Item], cfg: Config) -> dict[int, str]:
    """Assign whole groups to splits: shuffled with the seed, stratified by category, with
    the ratios applied by systematic sampling so small categories still get their share."""
    pc = cfg.prepare
    groups: dict[str, list[_Item]] = {}
    for item in items:
        groups.setdefault(_group(item, pc.group_by), []).append(item)
    strata: dict[str, list[str]] = defaultdict(list)
    for key, members in groups.items():
        category = str(members[0].record.get("category", "")) if pc.stratify else ""
        strata[category].append(key)
    rng = random.Random(pc.seed)
    chosen: dict[str, str] = {}
    acc_test = acc_valid = 0.5  # start half-way: round to nearest, not down
    for category in sorted(strata):
        keys = sorted(strata[category])
        rng.shuffle(keys)
        for key in keys:
            acc_test += pc.test_ratio
            acc_valid += pc.valid_ratio
            if acc_test >= 1:
                acc_test -= 1
                chosen[key] = "test"
            elif acc_valid >= 1:
                acc_valid -= 1
                chosen[key] = "valid"
            else:
                chosen[key] = "train"
    # mlx-lm needs a non-empty valid split to train; take one group from train if we can
    for split, ratio in (("valid", pc.valid_ratio), ("test", pc.test_ratio)):
        counts = Counter(chosen.values())
        if ratio > 0 and counts[split] == 0 and counts["train"] > 1:
            last_train = [k for k in chosen if chosen[k] == "train"][-1]
            chosen[last_train] = split
    return {id(item): chosen[key] for key, members in groups.items() for item in members}


# ---------------------------------------------------------------------------------------------
# Writing


def _write(
    out_dir: Path,
    split_rows: dict[str, list[_Item]],
    manifest: dict[str, Any],
    force: bool,
    measured_with: tuple[Any, str, ModelConfig],
) -> None:
    """Write into a temp directory beside out_dir, then swap it into place. `measured_with`:
    the tokenizer, template and model settings the token lengths come from."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for split, rows in split_rows.items():
            path = tmp / f"{split}.jsonl"
            atomic_write_text(path, "".join([it.line or jsonl_line(it.record) for it in rows]))
            manifest["files"][f"{split}.jsonl"] = {"rows": len(rows), "sha256": sha256_file(path)}
        atomic_write_json(tmp / "manifest.json", manifest)
        lengths = {f"{s}.jsonl": [it.tokens for it in rows] for s, rows in split_rows.items()}
        rec.write_lengths(tmp, *measured_with, lengths)
        os.chmod(tmp, 0o755)
        _check_out_dir(out_dir, force)
        old = None
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(tmp)
        raise


def manifest_sha256(out_dir: Path) -> str:
    """The "data manifest hash" runs record."""
    path = out_dir / "manifest.json"
    if not path.is_file():
        raise MlxtuneError(f"{path}: not found (run mlxtune prepare)")
    return sha256_file(path)
