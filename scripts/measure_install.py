"""Size of what `pip install 'mlxtune[EXTRAS]'` brings: walk the declared requirements (markers
evaluated for this machine) through the installed distributions' metadata and sum their files.

    python scripts/measure_install.py            # the base install with the cpu backend
    python scripts/measure_install.py cpu report # with extras
"""

from __future__ import annotations

import contextlib
import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(root: str, extras: set[str]) -> dict[str, metadata.Distribution]:
    seen: dict[str, metadata.Distribution] = {}
    todo: list[tuple[str, set[str]]] = [(root, extras)]
    while todo:
        name, want = todo.pop()
        key = canonicalize_name(name)
        if key in seen and not want:
            continue
        dist = metadata.distribution(name)
        seen[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            envs = [{"extra": e} for e in want] or [{"extra": ""}]
            if req.marker is None or any(req.marker.evaluate(env) for env in envs):
                try:
                    metadata.distribution(req.name)
                except metadata.PackageNotFoundError:
                    print(f"not installed: {req.name}", file=sys.stderr)
                    continue
                if canonicalize_name(req.name) not in seen or req.extras:
                    todo.append((req.name, set(req.extras)))
    return seen


def size(dist: metadata.Distribution) -> int:
    total = 0
    for f in dist.files or []:
        with contextlib.suppress(OSError):  # a RECORD entry whose file is gone
            total += Path(str(f.locate())).stat().st_size
    return total


def main() -> None:
    extras = set(sys.argv[1:]) or {"cpu"}
    dists = closure("mlxtune", extras)
    dists.pop("mlxtune")
    sizes = sorted(((size(d), n) for n, d in dists.items()), reverse=True)
    total = sum(s for s, _ in sizes)
    name = f"mlxtune[{','.join(sorted(extras))}]"
    print(f"{name}: {len(sizes)} distributions, {total / 2**20:.0f} MiB")
    for s, n in sizes[:10]:
        print(f"  {n:24s} {s / 2**20:7.1f} MiB")


if __name__ == "__main__":
    main()
