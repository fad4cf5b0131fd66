#!/usr/bin/env python3
"""Render a `mlxtune bench --json` file as markdown, for docs/benchmarks.md.

Usage: python scripts/bench_to_md.py build/bench/tiny.json [more.json ...] > table.md
Standard library only, so it runs anywhere the JSON is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.3g}"


def spread(side: dict[str, Any]) -> str:
    if not side.get("values"):
        return "-"
    if side["n"] == 1:
        return num(side["median"])
    return f"{num(side['median'])} ({num(side['min'])}–{num(side['max'])})"


def ratio(fig: dict[str, Any]) -> str:
    r = fig.get("ratio")
    if r is None:
        return "-"
    spread = fig.get("ratios")
    if spread and spread["n"] > 1:
        return f"{r:.2f}x ({spread['min']:.2f}–{spread['max']:.2f})"
    return f"{r:.2f}x"


def render(data: dict[str, Any], source: str) -> str:
    env = data["environment"]
    settings = data["settings"]
    v = env["versions"]
    lines = [
        f"### {settings['model']} — {', '.join(data['what'])}",
        "",
        f"- command: `mlxtune bench --what {','.join(data['what'])} --baseline {data['baseline']}"
        f" --repeat {data['repeat']}` (from `{source}`)",
        f"- date: {env['date']}; git {str(env.get('git_commit'))[:10]}",
        f"- machine: {env['cpu']}, {env['cpu_count']} cores, {env['machine']}; {env['device']}",
        f"- versions: mlxtune {v['mlxtune']}, mlx {v['mlx']}, mlx-lm {v['mlx_lm']},"
        f" Python {v['python']}; BLAS: {env['blas']}",
        f"- load average at start / end: {env['loadavg_start'][0]:.2f} /"
        f" {env.get('loadavg_end', [float('nan')])[0]:.2f}",
        "",
    ]
    has_seed = any(f.get("seed") is not None for f in data["figures"])
    lines.append(
        f"| what | case | metric | mlxtune | {data['baseline']} | ratio |"
        + (" seed |" if has_seed else "")
    )
    lines.append("|---|---|---|---:|---:|---:|" + ("---:|" if has_seed else ""))
    for f in data["figures"]:
        lines.append(
            f"| {f['section']} | {f['case']} | {f['metric']} ({f['unit']}) | "
            f"{spread(f['mlxtune'])} | {spread(f['baseline'])} | {ratio(f)} |"
            + (f" {num(f.get('seed'))} |" if has_seed else "")
        )
    lines.append("")
    lines.append(
        "Median of the repeats, (min–max) when more than one; ratio = mlxtune / baseline on the"
        " medians, (min–max) of the per-repeat ratios (the sides are interleaved)."
    )
    if data.get("targets"):
        lines += [
            "",
            "| target | median | per repeat (min–max) | goal | met |",
            "|---|---:|---:|---|---|",
        ]
        for t in data["targets"]:
            unit = "x" if t["unit"] == "x" else f" {t['unit']}"
            per = f"{num(t['min'])}–{num(t['max'])}" if t["n"] > 1 else "-"
            met = "**yes**" if t["met"] else "no"
            lines.append(
                f"| {t['target']} | {num(t['median'])}{unit} | {per} | {t['goal']} | {met} |"
            )
    lines.extend(f"- note: {n}" for n in data.get("notes", []))
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for path in argv:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 1
        sys.stdout.write(render(data, path) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
