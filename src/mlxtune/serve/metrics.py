"""Prometheus metrics for `mlxtune serve` (GET /metrics), one registry per app."""

from __future__ import annotations


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mlxtune_requests", "Requests by status and model", ["model", "status"], registry=r
        )
        self.routed = Counter(
            "mlxtune_route_requests", "Routed requests by variant",
            ["route", "variant", "status"], registry=r,
        )  # fmt: skip
        buckets = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
        self.latency = Histogram(
            "mlxtune_request_latency_seconds", "End-to-end latency", ["model"],
            buckets=buckets, registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "mlxtune_time_to_first_token_seconds", "Time to first token", ["model"],
            buckets=buckets, registry=r,
        )  # fmt: skip
        self.tokens = Counter(
            "mlxtune_tokens", "Tokens in (prompt) and out (completion)", ["model", "direction"],
            registry=r,
        )  # fmt: skip
        self.constrained = Counter(
            "mlxtune_constrained_requests", "Requests decoded under a response_format",
            ["model", "response_format", "status"], registry=r,
        )  # fmt: skip
        self.queue_depth = Gauge("mlxtune_queue_depth", "Requests waiting", registry=r)
        self.batch_size = Gauge("mlxtune_batch_size", "Sequences being decoded", registry=r)
        # One gauge per reading; `mlxtune bench` scrapes *peak_memory_bytes.
        self.memory = {
            kind: Gauge(f"mlxtune_{kind}_memory_bytes", f"MLX {kind} memory", registry=r)
            for kind in ("active", "peak", "cache")
        }

    def on_step(self, active: int, queued: int) -> None:
        self.batch_size.set(active)
        self.queue_depth.set(queued)

    def sample_memory(self) -> None:
        import mlx.core as mx

        self.memory["active"].set(mx.get_active_memory())
        self.memory["peak"].set(mx.get_peak_memory())
        self.memory["cache"].set(mx.get_cache_memory())

    def total_requests(self) -> int:
        """Requests counted so far, every model and status."""
        return int(
            sum(
                s.value
                for fam in self.requests.collect()
                for s in fam.samples
                if s.name.endswith("_total")
            )
        )

    def exposition(self) -> tuple[bytes, str]:
        """The text format body and its content type."""
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
