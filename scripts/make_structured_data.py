"""Derive the structured-answer dataset from the shipped domain facts.

    python scripts/make_structured_data.py [--out DIR]     # default: data/structured/

Each domain row keeps its question and metadata; its answer becomes a JSON object naming the
fact's category and its keywords, e.g. {"category": "services_ports", "keywords": ["8082"]}.
The schema those answers follow is written beside them (schema.json): configs/structured.yaml
scores format compliance against it, serve and evaluate can enforce it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

from mlxtune.io import atomic_write_json, atomic_write_text  # noqa: E402

SOURCE = REPO / "data" / "domain" / "universal_ai_tools.jsonl"
OUT = REPO / "data" / "structured"
MAX_KEYWORD_CHARS = 40  # the longest shipped keyword is 36


def schema(categories: list[str]) -> dict[str, object]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "domain fact",
        "type": "object",
        "properties": {
            "category": {"enum": categories},
            "keywords": {
                "type": "array",
                "items": {"type": "string", "minLength": 1, "maxLength": MAX_KEYWORD_CHARS},
                "minItems": 1,
                "maxItems": 3,
            },
        },
        "required": ["category", "keywords"],
        "additionalProperties": False,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    out = parser.parse_args().out
    rows = [json.loads(line) for line in SOURCE.read_text().splitlines() if line.strip()]
    lines = []
    for row in rows:
        answer = {"category": row["category"], "keywords": row["keywords"]}
        lines.append(json.dumps({**row, "output": json.dumps(answer)}))
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "domain_facts.jsonl", "\n".join(lines) + "\n")
    atomic_write_json(out / "schema.json", schema(sorted({r["category"] for r in rows})))
    print(f"{len(lines)} rows, {len({r['fact'] for r in rows})} facts -> {out}")


if __name__ == "__main__":
    main()
