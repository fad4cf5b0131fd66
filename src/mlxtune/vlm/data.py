"""Images in records: linking, checking and hashing them (prepare, validate-format), and
turning a record's `images` into the content parts a vision-language template renders.

A canonical record keeps its messages as text and lists its images beside them:
`{"messages": [...], "images": ["/abs/path.png"], ...}`. Raw chat rows may instead carry
`{"type": "image", "image": "path"}` parts; `flatten_image_parts` moves those into `images`.
Relative paths resolve against the source file's directory. Nothing here imports Pillow or
mlx-vlm until a record actually has images, so text-only data never pays for them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

MAX_IMAGE_SIDE = 4096  # larger images are almost certainly a mistake for fine-tuning
MIN_IMAGE_SIDE = 8


def flatten_image_parts(row: dict[str, Any]) -> dict[str, Any]:
    """A chat row whose contents are lists of parts -> text contents plus an `images` list
    (in order of appearance). Other rows come back unchanged."""
    messages = row.get("messages")
    if not isinstance(messages, list) or not any(
        isinstance(m, dict) and isinstance(m.get("content"), list) for m in messages
    ):
        return row
    images = list(image_list(row.get("images")))
    flat = []
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, list):
            flat.append(m)
            continue
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "image":
                images.append(part.get("image") or part.get("path") or "")
            elif kind == "text":
                texts.append(str(part.get("text", "")))
        flat.append({**m, "content": "\n".join(t for t in texts if t)})
    return {**row, "messages": flat, "images": images}


def image_list(value: Any) -> list[str]:
    """An `images` cell as a list of paths: a list, one path, or a JSON/`;`-separated string."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return [str(v) for v in value]
    text = str(value).strip()
    if text.startswith("["):
        import json

        try:
            return [str(v) for v in json.loads(text)]
        except ValueError:
            pass
    return [p.strip() for p in text.split(";") if p.strip()]


@dataclass
class ImageInfo:
    path: Path
    width: int
    height: int
    sha256: str


def check_image(path: Path) -> ImageInfo | str:
    """The image's size and hash, or why it cannot be used (missing, unreadable, odd size)."""
    if not path.is_file():
        return f"{path}: image not found"
    from PIL import Image, UnidentifiedImageError

    data = path.read_bytes()
    try:
        with Image.open(path) as im:
            im.load()  # decode fully: a truncated file opens but fails here
            width, height = im.size
    except (UnidentifiedImageError, OSError, ValueError) as e:
        return f"{path}: cannot read image ({type(e).__name__}: {e})"
    if min(width, height) < MIN_IMAGE_SIDE or max(width, height) > MAX_IMAGE_SIDE:
        return (
            f"{path}: image is {width}x{height}; sides must be "
            f"{MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE} pixels"
        )
    return ImageInfo(path, width, height, hashlib.sha256(data).hexdigest())


@dataclass
class ImageLedger:
    """What prepare saw of the images: counts and hashes for the manifest."""

    linked: int = 0
    missing: int = 0
    invalid: int = 0
    hashes: dict[str, str] = field(default_factory=dict)  # resolved path -> sha256
    sizes: set[tuple[int, int]] = field(default_factory=set)

    def manifest(self) -> dict[str, Any]:
        h = hashlib.sha256()
        for path in sorted(self.hashes):
            h.update(self.hashes[path].encode())
        return {
            "linked": self.linked,
            "unique": len(self.hashes),
            "missing": self.missing,
            "invalid": self.invalid,
            "sha256": h.hexdigest(),
            "sizes": sorted(f"{w}x{h_}" for w, h_ in self.sizes),
        }


def link_images(
    record: dict[str, Any], base: Path, ledger: ImageLedger | None = None
) -> list[tuple[str, str]]:
    """Resolve `record["images"]` against `base` in place (absolute paths) and check each one.
    Returns (field, message) problems; a record is never silently dropped for a bad image."""
    if "images" not in record:
        return []
    paths = image_list(record["images"])
    problems = []
    resolved = []
    for i, raw in enumerate(paths):
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = (base / path).resolve()
        resolved.append(str(path))
        result = check_image(path)
        if isinstance(result, str):
            problems.append((f"images[{i}]", result))
            if ledger is not None:
                if "not found" in result:
                    ledger.missing += 1
                else:
                    ledger.invalid += 1
            continue
        if ledger is not None:
            ledger.linked += 1
            ledger.hashes[str(path)] = result.sha256
            ledger.sizes.add((result.width, result.height))
    if paths and not _has_user_turn(record):
        problems.append(("images", "a record with images needs a user message to attach them to"))
    record["images"] = resolved
    if not resolved:
        del record["images"]
    return problems


def _has_user_turn(record: dict[str, Any]) -> bool:
    return any(m.get("role") == "user" for m in record.get("messages", []))


def image_group(record: dict[str, Any]) -> str | None:
    """The split group of a record with images: its images' hashes, so one image (even under two
    file names) never lands in two splits."""
    paths = record.get("images")
    if not paths:
        return None
    return "img:" + "+".join(sorted(_file_hash(p) for p in paths))


@cache
def _file_hash(path: str) -> str:
    from mlxtune.io import sha256_file

    try:
        return sha256_file(path)
    except OSError:
        return path


def with_image_parts(messages: list[dict[str, Any]], n_images: int) -> list[dict[str, Any]]:
    """Messages for a vision-language template: `n_images` image parts ahead of the first user
    message's text (where Qwen2-VL and most VLM templates expect them)."""
    if not n_images:
        return messages
    out = []
    placed = False
    for m in messages:
        if m["role"] == "user" and not placed:
            parts: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
            parts.append({"type": "text", "text": m["content"]})
            out.append({"role": "user", "content": parts})
            placed = True
        else:
            out.append(m)
    return out


def resolve_record_images(record: dict[str, Any], base: Path) -> list[Path]:
    """A prepared record's image paths, relative ones against the split file's directory."""
    return [
        p if p.is_absolute() else (base / p)
        for p in (Path(x) for x in image_list(record.get("images")))
    ]
