"""bench structured: what constrained decoding costs `mlxtune serve` under load.

One server, `max(bench.concurrency)` concurrent streaming clients, two loads alternated
`repeat` times: every request free, and every other request under a `response_format`
(json_schema). Figures: completion tokens/s of each, their ratio (mixed / all-free, per
repeat), and the share of constrained answers that parse and validate.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.bench.core import Progress, Recorder
from mlxtune.bench.procs import running_server
from mlxtune.bench.serve import LoadResult, run_load, serve_adapter, serve_prompts, server_command
from mlxtune.errors import MlxtuneError

if TYPE_CHECKING:
    from mlxtune.config import Config

# An open string and a list: answers run to about the same length as the free ones (the
# closing reserve shuts them near max_tokens), so the ratio compares like with like.
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "answer": {"type": "string"},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 3},
    },
    "required": ["answer", "tags"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "bench", "schema": SCHEMA, "strict": True},
}


def constrained_every_other(i: int) -> dict[str, Any]:
    return {"response_format": RESPONSE_FORMAT} if i % 2 else {}


def compliance(res: LoadResult) -> float | None:
    """Share of the constrained (odd) requests whose answer validates against SCHEMA."""
    from mlxtune.metrics import format_compliance

    answers = [text for i, text in res.texts.items() if i % 2]
    if not answers:
        return None
    return sum(format_compliance(a, SCHEMA) for a in answers) / len(answers)


def bench_structured(
    cfg: Config, work: Path, rec: Recorder, progress: Progress, repeat: int
) -> None:
    b = cfg.bench
    model, _ = serve_adapter(cfg)
    key = cfg.serve.resolved_api_key()
    prompts = serve_prompts()
    conc = max(b.concurrency)
    with running_server(
        lambda port: server_command(cfg, "mlxtune", port, work),
        work / "server-structured.log",
        b.time_limit_s,
        name="bench structured: server",
    ) as server:

        def load(case: str, n: int, extra: Any = None) -> LoadResult:
            res = run_load(
                server.url, model, prompts, concurrency=conc, requests=n,
                max_tokens=b.gen_tokens, time_limit_s=b.time_limit_s, api_key=key, extra=extra,
            )  # fmt: skip
            if res.ok < n:
                problems = "; ".join(res.error_samples) or f"{res.timed_out} timed out"
                failed = n - res.ok
                raise MlxtuneError(f"bench structured {case}: {failed} of {n} failed: {problems}")
            return res

        # Untimed: model load, compilation, and the grammar's first compile.
        load("warm-up", 2, constrained_every_other)
        for r in range(repeat):
            results = {}
            for case, extra in (("all free", None), ("half constrained", constrained_every_other)):
                progress(f"structured c={conc} {case}: repeat {r + 1}/{repeat}")
                results[case] = res = load(case, b.requests_per_level, extra)
                figures = {k: v for k, v in res.figures().items() if k != "n503"}
                rec.add("structured", f"c={conc} {case}", "mlxtune", figures)
            free, mixed = results["all free"], results["half constrained"]
            rec.add(
                "structured",
                f"c={conc} half constrained / all free",
                "mlxtune",
                {
                    "throughput_ratio": mixed.completion_tps / free.completion_tps
                    if free.completion_tps
                    else None,
                    "format_compliance": compliance(mixed),
                },
            )
