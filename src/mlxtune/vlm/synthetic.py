"""A small synthetic image set for tests and the vision demo: coloured shapes, one JSON label
per image, and a SQLite database linking them (the layout of seed 003: job records that map
each source image to its analysis). Generated with Pillow, never shipped as binaries.

  OUT/images/shape_000.png    64x64 RGB
  OUT/labels/shape_000.json   {"shape": "circle", "color": "red", "size": "large"}
  OUT/jobs.sqlite             jobs(job_id, image_path, label_path, analysis, prompt)
  OUT/schema.json             the JSON Schema every answer follows (evaluate.output_schema)
"""

from __future__ import annotations

import itertools
import json
import random
import sqlite3
from dataclasses import dataclass
from pathlib import Path

SHAPES = ("circle", "square", "triangle")
COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220)}
SIZES = ("small", "large")
SIDE = 64
PROMPT = "Describe the shape in this image as JSON."
QUERY = (
    "SELECT j.job_id AS id, j.image_path AS images, j.prompt AS prompt, "
    "j.analysis AS completion FROM jobs j ORDER BY j.job_id"
)

SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["shape", "color", "size"],
    "additionalProperties": False,
    "properties": {
        "shape": {"enum": list(SHAPES)},
        "color": {"enum": list(COLORS)},
        "size": {"enum": list(SIZES)},
    },
}


@dataclass
class SyntheticSet:
    root: Path
    images: int
    database: Path
    schema: Path


def label_json(shape: str, color: str, size: str) -> str:
    """The answer text: compact JSON with a fixed key order (what the model learns to write)."""
    return json.dumps({"shape": shape, "color": color, "size": size}, separators=(",", ":"))


def draw(shape: str, color: str, size: str, rng: random.Random) -> object:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (SIDE, SIDE), (245, 245, 240))
    d = ImageDraw.Draw(img)
    r = 24 if size == "large" else 12
    cx, cy = rng.randint(r + 2, SIDE - r - 2), rng.randint(r + 2, SIDE - r - 2)
    fill = COLORS[color]
    if shape == "circle":
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        d.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        d.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    return img


def make_synthetic_set(out: Path, *, per_combo: int = 2, seed: int = 0) -> SyntheticSet:
    """Write `per_combo` images of every (shape, colour, size): 18 * per_combo in all."""
    rng = random.Random(seed)
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    db = out / "jobs.sqlite"
    db.unlink(missing_ok=True)
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE jobs (job_id TEXT PRIMARY KEY, image_path TEXT, label_path TEXT, "
        "analysis TEXT, prompt TEXT)"
    )
    n = 0
    for shape, color, size in itertools.product(SHAPES, COLORS, SIZES):
        for _ in range(per_combo):
            name = f"shape_{n:03d}"
            draw(shape, color, size, rng).save(out / "images" / f"{name}.png")  # type: ignore[attr-defined]
            answer = label_json(shape, color, size)
            (out / "labels" / f"{name}.json").write_text(answer + "\n")
            con.execute(
                "INSERT INTO jobs VALUES (?, ?, ?, ?, ?)",
                (name, f"images/{name}.png", f"labels/{name}.json", answer, PROMPT),
            )
            n += 1
    con.commit()
    con.close()
    (out / "schema.json").write_text(json.dumps(SCHEMA, indent=2) + "\n")
    return SyntheticSet(out, n, db, out / "schema.json")
