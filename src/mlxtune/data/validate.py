"""`mlxtune validate-format`: check prepared (or any) JSONL files before training does.

Every row: JSON parses, one known format, its JSON Schema, role order, no empty turns,
length within `train.max_seq_length`, the answer against `evaluate.output_schema` when set.
Across files: one format, no question in two splits
(exact or normalised), enough rows for `train.batch_size`. Prompts: a chat template exists
and the prompt training masks is token-for-token the prompt evaluate and serve generate from
(and what raw mlx-lm tokenizes). Each problem is `path:line: field: message`.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune import formats
from mlxtune.data import records as rec
from mlxtune.data.sources import EXTENSIONS, iter_jsonl_lines, json_error, read_source
from mlxtune.errors import BadData, ConfigError
from mlxtune.io import loads_json
from mlxtune.metrics import schema_problem
from mlxtune.vlm.data import flatten_image_parts, link_images

if TYPE_CHECKING:
    from mlxtune.config import Config, ModelConfig, SourceConfig

SPLITS = ("train", "valid", "test")


@dataclass
class Problem:
    path: str
    line: int | None
    field: str
    message: str
    check: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else self.path
        return f"{where}: {self.field}: {self.message}"


@dataclass
class FileReport:
    path: str
    split: str
    rows: int
    format: str | None
    token_lengths: dict[str, int]
    too_long: int


@dataclass
class Segment:
    text: str
    trained: bool


@dataclass
class Example:
    where: str
    segments: list[Segment]
    tokens: int
    trained_tokens: int


@dataclass
class ValidateResult:
    files: list[FileReport]
    problems: list[Problem]
    examples: list[Example] = field(default_factory=list)
    format: str | None = None
    template_fingerprint: str = ""
    max_seq_length: int = 0
    batch_size: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for p in self.problems:
            out[p.check] = out.get(p.check, 0) + 1
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "rows": self.rows,
            "format": self.format,
            "template_fingerprint": self.template_fingerprint,
            "max_seq_length": self.max_seq_length,
            "batch_size": self.batch_size,
            "files": [asdict(f) for f in self.files],
            "problem_counts": self.counts(),
            "problems": [{**asdict(p), "text": str(p)} for p in self.problems],
            "examples": [asdict(e) for e in self.examples],
        }


@dataclass
class _Row:
    record: dict[str, Any]  # canonical
    where: rec.Located
    split: str


def resolve_paths(cfg: Config, paths: list[Path] | None) -> list[Path]:
    """Files to check: the given files, each given directory's split files (or the directory
    itself when it is a saved `datasets` folder), or data.dir's split files."""
    targets = list(paths) if paths else [Path(cfg.data.dir)]
    files: list[Path] = []
    for target in targets:
        if target.is_dir():
            found = [target / f"{s}.jsonl" for s in SPLITS if (target / f"{s}.jsonl").is_file()]
            if not found and paths and _is_saved_dataset(target):
                found = [target]
            if not found:
                label = "data.dir: " if not paths else ""
                raise ConfigError(
                    f"{label}{target}: no train.jsonl, valid.jsonl or test.jsonl "
                    "(run mlxtune prepare)"
                )
            files.extend(found)
        elif target.is_file():
            files.append(target)
        elif not paths:
            raise ConfigError(f"data.dir: {target}: not found (run mlxtune prepare)")
        else:
            raise ConfigError(f"{target}: no such file or directory")
    order = {s: i for i, s in enumerate(SPLITS)}
    return sorted(dict.fromkeys(files), key=lambda p: order.get(p.stem, len(SPLITS)))


def _is_saved_dataset(path: Path) -> bool:
    return (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file()


def raw_source(cfg: Config, path: Path) -> SourceConfig | None:
    """The reader settings for a raw source `prepare` reads (CSV, Parquet, a JSON array,
    SQLite, a saved `datasets` folder), or None for JSON Lines. A file that is also one of
    `prepare.sources` keeps its columns, query and split from there."""
    from mlxtune.config import SourceConfig

    kind = "hf" if path.is_dir() else EXTENSIONS.get(path.suffix.lower(), "jsonl")
    if kind == "jsonl":
        return None
    here = path.resolve()
    for src in cfg.prepare.sources:
        if Path(src.path).resolve() == here:
            return src.model_copy(update={"path": str(path)})
    if kind == "sqlite":
        raise ConfigError(
            f"{path}: a SQLite source needs a query: list it in prepare.sources with `query`"
        )
    return SourceConfig(path=str(path), type=kind)


_LOCATED = re.compile(r"^(?P<path>.+?):(?P<line>\d+): (?P<field>[^:]+): (?P<message>.*)$")


def _reader_problem(path: Path, error: BadData) -> Problem:
    """A reader's `path:line: field: message` error as a Problem (it stops that file)."""
    text = str(error)
    m = _LOCATED.match(text)
    if m:
        return Problem(m["path"], int(m["line"]), m["field"], m["message"], "json")
    return Problem(str(path), None, "read", text.removeprefix(f"{path}: "), "json")


class _Problems(list[Problem]):
    """Every problem found so far: checks add to it and go on, so one run lists them all."""

    def add(self, where: rec.Located | str, fld: str, message: str, check: str) -> None:
        if isinstance(where, rec.Located):
            self.append(Problem(where.path, where.line, fld, message, check))
        else:
            self.append(Problem(where, None, fld, message, check))


# a row that parsed, with the format detected from it: (object, format, where, split)
_Parsed = tuple[dict[str, Any], str, rec.Located, str]


def validate_format(
    cfg: Config, paths: list[Path] | None = None, *, show: int = 0
) -> ValidateResult:
    """Read every row, check each row, then the files together, then the prompt and the
    template; every step adds to one problem list instead of stopping at the first."""
    files = resolve_paths(cfg, paths)
    output_schema = cfg.evaluate.resolved_output_schema()
    tokenizer = _Tokenizer(cfg.model)
    cached = _cached_files(files, tokenizer, need_tokenizer=show > 0)
    max_len = cfg.train.max_seq_length
    problems = _Problems()

    parsed = _read_rows(cfg, files, problems)
    major, mixed = rec.majority_format([(fmt, where) for _, fmt, where, _ in parsed])
    if mixed:
        problems.add(mixed[0], "format", mixed[1], "format")
    measure = len(cached) < len(files)
    with formats.TrainingLengths(tokenizer.get() if measure else None) as measured:
        # rows of files prepare did not measure are tokenized while the other checks run
        rows = _check_rows(
            parsed,
            problems,
            lambda row: measured.add(row.record) if row.where.path not in cached else None,
        )
        across = _Problems()  # added after the length problems, the order they are listed in
        _check_duplicates(rows, across)
        _check_leakage(rows, across)
        lengths = _lengths(tokenizer, rows, cached, measured.lengths() if measure else [])
    _check_lengths(rows, lengths, max_len, problems)
    problems.extend(across)
    reports = _file_reports(files, parsed, rows, lengths, cfg, problems)
    _check_prompt(tokenizer, rows, cached, problems)
    fingerprint = (
        formats.template_fingerprint(tokenizer.template())
        if tokenizer.loaded or not cached
        else next(iter(cached.values())).template
    )
    _check_manifests(files, fingerprint, problems)
    if output_schema is not None:
        _check_answers(rows, output_schema, problems)

    examples = [preview(tokenizer.get(), r.record, str(r.where)) for r in rows[:show]]
    # file order (train, valid, test), then line; problems about other files go last
    rank = {str(p): i for i, p in enumerate(files)}
    problems.sort(key=lambda p: (rank.get(p.path, len(files)), p.line or 0))
    return ValidateResult(
        files=reports,
        problems=list(problems),
        examples=examples,
        format=major,
        template_fingerprint=fingerprint,
        max_seq_length=max_len,
        batch_size=cfg.train.batch_size,
    )


class _Tokenizer:
    """The model's tokenizer and template, loaded on first use: prepared files that prepare
    measured with the same model files need neither (importing mlx_lm and transformers to
    load them is ~2 s)."""

    def __init__(self, model_cfg: ModelConfig) -> None:
        self._model_cfg = model_cfg
        self._loaded: tuple[Any, str] | None = None

    @property
    def loaded(self) -> bool:
        return self._loaded is not None

    def get(self) -> Any:
        if self._loaded is None:
            tokenizer, template, _ = rec.load_tokenizer(self._model_cfg)
            self._loaded = tokenizer, template
        return self._loaded[0]

    def template(self) -> str:
        self.get()
        assert self._loaded is not None
        return self._loaded[1]


def _cached_files(
    files: list[Path], tokenizer: _Tokenizer, *, need_tokenizer: bool
) -> dict[str, rec.CachedFile]:
    """path -> what prepare measured, for each file still byte for byte as prepare wrote it
    with the same model files (found without loading the tokenizer) or, once the tokenizer
    is loaded anyway, the same tokenizer and template."""
    model = rec.model_fingerprint(tokenizer._model_cfg)
    found = {str(p): c for p in files if (c := rec.cached_file(p, model=model)) is not None}
    if len(found) == len(files) and not need_tokenizer:
        return found
    fingerprint = formats.tokenizer_fingerprint(tokenizer.get())
    for path in files:
        if str(path) not in found and (c := rec.cached_file(path, tokenizer=fingerprint)):
            found[str(path)] = c
    return found


def _read_rows(cfg: Config, files: list[Path], problems: _Problems) -> list[_Parsed]:
    """Parse every row of every file and detect its format; a file with no rows (and no
    other problem) is a problem of its own."""
    parsed: list[_Parsed] = []
    for path in files:
        lines = _read_file(cfg, path, problems, parsed)
        if not lines and not any(p.path == str(path) for p in problems):
            problems.add(str(path), "rows", "empty file (no records)", "empty")
    return parsed


def _read_file(cfg: Config, path: Path, problems: _Problems, parsed: list[_Parsed]) -> int:
    """One file's rows into `parsed`; raw sources go through prepare's readers so this
    checks what prepare would read. Returns the lines read (a failed read counts one)."""
    split = path.stem
    lines = 0
    source = raw_source(cfg, path)
    if source is not None:
        try:
            for raw in read_source(source):
                lines += 1
                _take(raw.data, rec.Located(str(path), raw.line), split, problems, parsed)
        except BadData as e:
            problems.append(_reader_problem(path, e))
            lines += 1  # a file that fails to read is not also "empty"
    else:

        def bad_encoding(number: int, message: str, path: Path = path) -> None:
            problems.add(rec.Located(str(path), number), "encoding", message, "json")

        for number, text in iter_jsonl_lines(str(path), bad_encoding):
            lines += 1
            where = rec.Located(str(path), number)
            try:
                obj = loads_json(text)
            except json.JSONDecodeError as e:
                problems.add(where, "json", json_error(e), "json")
                continue
            _take(obj, where, split, problems, parsed)
    return lines


def _take(
    obj: Any, where: rec.Located, split: str, problems: _Problems, parsed: list[_Parsed]
) -> None:
    """Keep a parsed row with its format, or say why it has none."""
    if not isinstance(obj, dict):
        problems.add(where, "json", f"expected an object, got {type(obj).__name__}", "json")
        return
    obj = flatten_image_parts(obj)
    fmt = formats.detect_format(obj)
    if fmt is None:
        keys = ", ".join(map(str, obj)) or "none"
        problems.add(where, "format", f"matches no known format (keys: {keys})", "format")
        return
    parsed.append((obj, fmt, where, split))


def _check_rows(
    parsed: list[_Parsed], problems: _Problems, take: Callable[[_Row], None]
) -> list[_Row]:
    """Per row: schema, images, role order, empty turns, tools. Returns the rows later
    checks can read (schema-valid, canonical, roles in order), each also given to `take`."""
    rows: list[_Row] = []
    for obj, fmt, where, split in parsed:
        bad = rec.schema_problems(obj, fmt)
        for fld, message in bad:
            problems.add(where, fld, message, "schema")
        if bad:
            continue
        record = formats.to_canonical(obj, fmt)
        for fld, message in link_images(record, Path(where.path).parent):
            problems.add(where, fld, message, "image")
        if "messages" in record:
            order = formats.role_order_problem(record["messages"])
            if order:
                fld, _, message = order.partition(" is ")
                if not fld.startswith("messages["):
                    fld, message = "messages", order
                problems.add(where, fld, message, "roles")
            for i in rec.empty_turns(record):
                role = record["messages"][i]["role"]
                problems.add(where, f"messages[{i}].content", f"empty {role} turn", "empty")
            for fld, message in formats.tool_problems(record):
                problems.add(where, fld, message, "tools")
            if order:
                continue
        elif not str(record["text"]).strip():
            problems.add(where, "text", "empty text", "empty")
        rows.append(_Row(record, where, split))
        take(rows[-1])
    return rows


def _check_lengths(rows: list[_Row], lengths: list[int], max_len: int, problems: _Problems) -> None:
    """Token lengths (measured with the real tokenizer and template, or by prepare for a file,
    tokenizer and template unchanged) against max_seq_length."""
    for row, n in zip(rows, lengths, strict=True):
        if n > max_len:
            problems.add(
                row.where,
                "tokens",
                f"{n} tokens > train.max_seq_length {max_len} (mlx-lm would truncate it)",
                "length",
            )


def _check_duplicates(rows: list[_Row], problems: _Problems) -> None:
    """The same row twice in one file."""
    seen_row: dict[tuple[str, str], _Row] = {}
    for row in rows:
        key = (str(row.where.path), rec.exact_key(row.record))
        earlier = seen_row.setdefault(key, row)
        if earlier is not row:
            problems.add(
                row.where, "duplicate", f"same row as line {earlier.where.line}", "duplicate"
            )


def _check_leakage(rows: list[_Row], problems: _Problems) -> None:
    """The same question in two splits, exactly or after normalisation: evaluation would
    score questions the model trained on."""
    seen_exact: dict[str, _Row] = {}
    seen_norm: dict[str, _Row] = {}
    for row in rows:
        exact, norm = rec.question(row.record), rec.question_key(row.record)
        first = seen_exact.get(exact)
        if first is not None and first.split != row.split:
            problems.add(
                row.where, "leakage", f"same question as {first.where} ({first.split})", "leakage"
            )
        elif (other := seen_norm.get(norm)) is not None and other.split != row.split:
            problems.add(
                row.where,
                "leakage",
                f"same question after normalisation as {other.where} ({other.split})",
                "leakage",
            )
        seen_exact.setdefault(exact, row)
        seen_norm.setdefault(norm, row)


def _file_reports(
    files: list[Path],
    parsed: list[_Parsed],
    rows: list[_Row],
    lengths: list[int],
    cfg: Config,
    problems: _Problems,
) -> list[FileReport]:
    """Each file's counts and lengths, and whether train/valid hold a batch (mlx-lm checks
    that only when it gets there)."""
    max_len = cfg.train.max_seq_length
    reports = []
    for path in files:
        file_rows = [
            (r, n) for r, n in zip(rows, lengths, strict=True) if r.where.path == str(path)
        ]
        n_rows = sum(1 for _, _, w, _ in parsed if w.path == str(path))
        if path.stem in ("train", "valid") and n_rows < cfg.train.batch_size:
            problems.add(
                str(path),
                "rows",
                f"{n_rows} rows < train.batch_size {cfg.train.batch_size}",
                "batch_size",
            )
        fmts = {fmt for _, fmt, w, _ in parsed if w.path == str(path)}
        reports.append(
            FileReport(
                path=str(path),
                split=path.stem,
                rows=n_rows,
                format=fmts.pop() if len(fmts) == 1 else ("mixed" if fmts else None),
                token_lengths=rec.length_stats([n for _, n in file_rows]),
                too_long=sum(1 for _, n in file_rows if n > max_len),
            )
        )
    return reports


def _check_prompt(
    tokenizer: _Tokenizer, rows: list[_Row], cached: dict[str, rec.CachedFile], problems: _Problems
) -> None:
    """One prompt: what training masks is what evaluate and serve generate from (the
    template decides that, so the first chat row stands for all; prepare checked the first
    conversation of each file it wrote)."""
    chat = next((r for r in rows if "messages" in r.record), None)
    if chat is None:
        return
    known = cached.get(chat.where.path)
    if known is not None and known.prompt_line == chat.where.line:
        found = known.prompt_problems
    else:
        found = rec.prompt_mismatches(tokenizer.get(), chat.record)
    for message in found:
        problems.add(chat.where, "prompt", message, "prompt")


def _check_manifests(files: list[Path], fingerprint: str, problems: _Problems) -> None:
    """Prepared with the same template as the model renders now (each directory's
    manifest.json, where there is one)."""
    for directory in dict.fromkeys(p.parent for p in files):
        manifest = directory / "manifest.json"
        if manifest.is_file():
            try:
                was = json.loads(manifest.read_text())["template"]["fingerprint"]
            except (ValueError, KeyError, TypeError):
                continue
            if was != fingerprint:
                problems.add(
                    str(manifest),
                    "template.fingerprint",
                    f"prepared with template {was}, model.path now renders with {fingerprint}",
                    "prompt",
                )


def _check_answers(rows: list[_Row], output_schema: dict[str, Any], problems: _Problems) -> None:
    """Answers in the format evaluate scores and serve enforces, so none teaches another."""
    for row in rows:
        if "messages" not in row.record:
            continue
        _, answer = formats.prompt_and_answer(row.record)
        problem = schema_problem(answer, output_schema)
        if problem:
            last = len(row.record["messages"]) - 1
            problems.add(
                row.where, f"messages[{last}].content", f"answer {problem}", "output_schema"
            )


def _lengths(
    tokenizer: _Tokenizer,
    rows: list[_Row],
    cached: dict[str, rec.CachedFile],
    measured: list[int],
) -> list[int]:
    """Each row's length: prepare's for a cached file (when it holds as many rows as were
    measured), else `measured` (the rows of the other files, in order)."""
    counts = Counter(r.where.path for r in rows)
    usable = {p: iter(c.lengths) for p, c in cached.items() if len(c.lengths) == counts[p]}
    late = [r.record for r in rows if r.where.path in cached and r.where.path not in usable]
    late_lengths = iter(formats.training_lengths(tokenizer.get(), late) if late else [])
    fresh = iter(measured)
    out = []
    for row in rows:
        path = row.where.path
        if path in usable:
            out.append(next(usable[path]))
        else:
            out.append(next(late_lengths if path in cached else fresh))
    return out


def preview(tokenizer: Any, record: dict[str, Any], where: str) -> Example:
    """Tokens of a record cut into runs of masked prompt and trained answer, decoded."""
    tokens, mask = formats.encode_for_training(tokenizer, record, mask_prompt=True)
    hf = formats._hf(tokenizer)
    segments: list[Segment] = []
    start = 0
    for i in range(1, len(tokens) + 1):
        if i == len(tokens) or mask[i] != mask[start]:
            segments.append(Segment(hf.decode(tokens[start:i]), mask[start]))
            start = i
    return Example(where, segments, len(tokens), sum(mask))
