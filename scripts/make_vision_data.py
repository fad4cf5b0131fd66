"""Generate the synthetic vision set (coloured shapes, JSON labels, a SQLite file linking them).

python scripts/make_vision_data.py build/vision-data --per-combo 2
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mlxtune.vlm.synthetic import make_synthetic_set


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--per-combo", type=int, default=2, help="images per shape/colour/size")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    s = make_synthetic_set(args.out, per_combo=args.per_combo, seed=args.seed)
    print(f"wrote {s.images} images, labels, {s.database} and {s.schema}")


if __name__ == "__main__":
    main()
