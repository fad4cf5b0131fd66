"""The evaluation report: what `evaluate` builds, writes as report.json, and every renderer reads.

`EvalReport.to_dict()` is report.json (schema_version 1, documented in docs/evaluate.md);
`EvalReport.from_dict()` reads one back, filling the keys an older or hand-made report lacks.
Pure data: no mlx, no rich.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1

# metric -> value; a value is None when it was not computed or there was no data.
Scores = dict[str, float | None]


@dataclass
class MetricBlock:
    """Scores of one scope (overall, or one category): adapter, base and adapter - base."""

    adapter: Scores
    base: Scores | None = None
    delta: Scores | None = None
    n: int | None = None  # examples in a category; overall uses EvalReport.n_examples
    # the adapter decoding under evaluate.output_schema (evaluate.constrained), else None
    constrained: Scores | None = None

    def to_dict(self, *, with_n: bool = True) -> dict[str, Any]:
        scores = {"base": self.base, "adapter": self.adapter, "delta": self.delta}
        if self.constrained is not None:  # only then: reports without it keep their keys
            scores["constrained"] = self.constrained
        return {"n": self.n, **scores} if with_n else scores

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MetricBlock:
        return cls(
            adapter=dict(data.get("adapter") or {}),
            base=data.get("base"),
            delta=data.get("delta"),
            n=data.get("n"),
            constrained=data.get("constrained"),
        )


@dataclass
class Threshold:
    metric: str
    category: str | None
    kind: str  # "min" | "min_delta"
    value: float
    actual: float | None = None
    passed: bool = False

    @property
    def key(self) -> str:
        return f"{self.category}/{self.metric}" if self.category else self.metric

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "category": self.category,
            "kind": self.kind,
            "value": self.value,
            "actual": self.actual,
            "passed": self.passed,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Threshold:
        return cls(
            data["metric"],
            data.get("category"),
            data.get("kind", "min"),
            float(data["value"]),
            data.get("actual"),
            bool(data.get("passed")),
        )


@dataclass
class Guard:
    name: str
    passed: bool
    message: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "passed": self.passed, "message": self.message}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Guard:
        return cls(data["name"], bool(data.get("passed")), str(data.get("message", "")))


@dataclass
class Timing:
    mode: str = ""  # batched | sequential | endpoint
    batch_size: int | None = None
    max_tokens: int | None = None
    load_s: float = 0.0
    generate_s: dict[str, float] = field(default_factory=dict)  # per side
    generated_tokens: dict[str, int] = field(default_factory=dict)
    loss_s: dict[str, float] = field(default_factory=dict)
    total_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "batch_size": self.batch_size,
            "max_tokens": self.max_tokens,
            "load_s": self.load_s,
            "generate_s": self.generate_s,
            "generated_tokens": self.generated_tokens,
            "loss_s": self.loss_s,
            "total_s": self.total_s,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timing:
        known = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in known})


def gate_outcome(thresholds: list[Threshold], guards: list[Guard]) -> tuple[bool, bool]:
    """(passed, adapter_equals_base): every threshold and guard held; the first guard is the
    adapter-differs-from-base check, so its failure means the adapter changed nothing."""
    passed = all(t.passed for t in thresholds) and all(g.passed for g in guards)
    return passed, (not guards[0].passed if guards else False)


@dataclass
class EvalReport:
    """One evaluation: scores overall and per category, the gate, timing and provenance."""

    split: str
    n_examples: int
    overall: MetricBlock
    per_category: dict[str, MetricBlock]
    passed: bool
    model: str | None = None
    labels: dict[str, str | None] = field(default_factory=dict)  # adapter, base (None: not run)
    run: str | None = None
    adapter: str | None = None
    endpoint: str | None = None
    endpoint_model: str | None = None
    # --endpoint: how many answers each model named in its response (a route's A/B split)
    served_by: dict[str, int] = field(default_factory=dict)
    data_dir: str | None = None
    template_sha: str | None = None
    thresholds: list[Threshold] = field(default_factory=list)
    guards: list[Guard] = field(default_factory=list)
    adapter_equals_base: bool = False
    warnings: list[str] = field(default_factory=list)
    timing: Timing = field(default_factory=Timing)
    versions: dict[str, str] = field(default_factory=dict)
    created_at: str | None = None
    schema_version: int = SCHEMA_VERSION

    @property
    def has_base(self) -> bool:
        return self.overall.base is not None

    @property
    def has_constrained(self) -> bool:
        """The adapter was also scored decoding under the output schema."""
        return self.overall.constrained is not None

    def blocks(self, *, sort: bool = False) -> list[tuple[str, MetricBlock]]:
        """(scope, block) for overall (n = n_examples), then each category: in report order,
        or by name with `sort`."""
        overall = MetricBlock(
            self.overall.adapter, self.overall.base, self.overall.delta,
            n=self.n_examples, constrained=self.overall.constrained,
        )  # fmt: skip
        items = list(self.per_category.items())
        categories = sorted(items, key=lambda cb: cb[0]) if sort else items
        return [("overall", overall), *categories]

    def to_dict(self) -> dict[str, Any]:
        """report.json, key for key as docs/evaluate.md lists it."""
        return {
            "schema_version": self.schema_version,
            "created_at": self.created_at,
            "run": self.run,
            "adapter": self.adapter,
            "endpoint": self.endpoint,
            "endpoint_model": self.endpoint_model,
            "served_by": self.served_by,
            "model": self.model,
            "labels": self.labels,
            "split": self.split,
            "data_dir": self.data_dir,
            "n_examples": self.n_examples,
            "template_sha": self.template_sha,
            "overall": self.overall.to_dict(with_n=False),
            "per_category": {c: b.to_dict() for c, b in self.per_category.items()},
            "thresholds": [t.to_dict() for t in self.thresholds],
            "guards": [g.to_dict() for g in self.guards],
            "passed": self.passed,
            "adapter_equals_base": self.adapter_equals_base,
            "warnings": self.warnings,
            "timing": self.timing.to_dict(),
            "versions": self.versions,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        """A report.json as written (or a partial one: missing keys take their defaults)."""
        return cls(
            schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
            created_at=data.get("created_at"),
            run=data.get("run"),
            adapter=data.get("adapter"),
            endpoint=data.get("endpoint"),
            endpoint_model=data.get("endpoint_model"),
            served_by=dict(data.get("served_by") or {}),
            model=data.get("model"),
            labels=dict(data.get("labels") or {}),
            split=str(data.get("split", "?")),
            data_dir=data.get("data_dir"),
            n_examples=int(data.get("n_examples") or 0),
            template_sha=data.get("template_sha"),
            overall=MetricBlock.from_dict(data.get("overall") or {}),
            per_category={
                c: MetricBlock.from_dict(b) for c, b in (data.get("per_category") or {}).items()
            },
            thresholds=[Threshold.from_dict(t) for t in data.get("thresholds") or []],
            guards=[Guard.from_dict(g) for g in data.get("guards") or []],
            passed=bool(data.get("passed")),
            adapter_equals_base=bool(data.get("adapter_equals_base")),
            warnings=list(data.get("warnings") or []),
            timing=Timing.from_dict(data.get("timing") or {}),
            versions=dict(data.get("versions") or {}),
        )
