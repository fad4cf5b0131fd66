"""Print the demo's closing table from the files the steps wrote (nothing here is assumed)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def main(out: Path) -> None:
    console = Console()
    times = Table(title="demo steps")
    times.add_column("step")
    times.add_column("seconds", justify="right")
    total = 0.0
    for line in (out / "timings.tsv").read_text().splitlines():
        name, t0, t1 = line.split("\t")
        dt = float(t1) - float(t0)
        total += dt
        times.add_row(name, f"{dt:.1f}")
    times.add_row("[bold]total[/bold]", f"[bold]{total:.1f}[/bold]")
    console.print(times)

    results = Table(title="what was measured")
    results.add_column("figure")
    results.add_column("base", justify="right")
    results.add_column("fine-tuned", justify="right")
    for split in ("train", "test"):
        report = load(out / f"eval-{split}" / "report.json")
        overall = report.get("overall", {})
        label = "trained questions" if split == "train" else "held-out paraphrases"
        for metric in ("keyword_accuracy", "token_f1"):
            base = overall.get("base", {}).get(metric)
            adapter = overall.get("adapter", {}).get(metric)
            results.add_row(f"{metric} ({label})", pct(base), pct(adapter))
    retrieval = load(out / "retrieval" / "report.json").get("overall", {})
    for metric in ("recall_at_1", "mrr") if retrieval else ():
        base, adapter = retrieval["base"].get(metric), retrieval["adapter"].get(metric)
        label = f"retrieval {metric} (held-out question -> answer)"
        results.add_row(label, pct(base), pct(adapter))
    serve = load(out / "serve.json")
    if serve:
        results.add_row(
            "serve: adapter answered / keywords found",
            "",
            f"{serve.get('adapter_answered')} / {serve.get('keywords_found')}",
        )
    bench = load(out / "bench.json")
    for fig in bench.get("figures", []):
        if fig.get("metric") == "generation_tps":
            value = fig["mlxtune"]["median"]
            results.add_row(f"bench: generation tok/s ({fig['case']})", "", f"{value:.0f}")
    console.print(results)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
