"""`serve.routes`: a route name (e.g. "assistant") that sends each request to one of several
served models by weight, e.g. {prod: 90, canary: 10}. A client that names itself (the `user`
field, or an X-Session-Id header) always lands on the same variant for the same weights;
anonymous requests are drawn at random. The response's `model` names the variant."""

from __future__ import annotations

import hashlib
import random
from typing import TYPE_CHECKING

from mlxtune.errors import MlxtuneError

if TYPE_CHECKING:
    from mlxtune.config import Config

Routes = dict[str, list[tuple[str, float]]]  # route -> [(variant, weight)], weights > 0


def check_routes(cfg: Config, served: list[str]) -> Routes:
    """`serve.routes` validated against the served model names; one-line errors."""
    routes: Routes = {}
    for route, weights in cfg.serve.routes.items():
        field = f"serve.routes.{route}"
        if route in served:
            raise MlxtuneError(f"{field}: name clashes with a served model")
        if not weights:
            raise MlxtuneError(f"{field}: needs at least one model and weight")
        for variant, weight in weights.items():
            if variant not in served:
                raise MlxtuneError(
                    f"{field}.{variant}: not a served model (served: {', '.join(served)})"
                )
            if weight < 0:
                raise MlxtuneError(f"{field}.{variant}: weight must be >= 0, got {weight}")
        if sum(weights.values()) <= 0:
            raise MlxtuneError(f"{field}: weights add up to 0")
        routes[route] = [(v, float(w)) for v, w in weights.items() if w > 0]
    return routes


def pick_variant(route: str, variants: list[tuple[str, float]], session: str | None) -> str:
    """The variant for one request: by a hash of (route, session) when the client names a
    session, so it stays put; at random otherwise."""
    if session:
        digest = hashlib.sha256(f"{route}\0{session}".encode()).digest()
        point = int.from_bytes(digest[:8], "big") / 2**64
    else:
        point = random.random()
    total = sum(w for _, w in variants)
    upto = 0.0
    for variant, weight in variants:
        upto += weight / total
        if point < upto:
            return variant
    return variants[-1][0]
