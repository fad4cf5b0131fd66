"""`POST /admin/reload`: serve what `serve.adapters` points at now, without a restart.

Every adapter is resolved again (an "@alias" follows `runs promote` / `runs rollback`); one
whose adapter file changed is loaded beside the old (sharing the base's weights), then swapped
in at once. Requests already queued or decoding finish on the old weights; new ones get the
new. The API key is required when one is set; with none, only loopback clients may reload.
"""

from __future__ import annotations

import asyncio
import ipaddress
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request

from mlxtune.errors import MlxtuneError
from mlxtune.serve.guard import AUTHED
from mlxtune.serve.state import ServeState, State
from mlxtune.serve.wire import ApiError

router = APIRouter()


def check_admin(request: Request, state: ServeState) -> None:
    """The key when one is set; otherwise the client must be on this machine."""
    if state.api_key is not None:  # guard.KeyGate checked it (unless made public)
        if not request.scope.get(AUTHED):
            raise ApiError(
                401, "invalid or missing API key", type_="authentication_error",
                code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"},
            )  # fmt: skip
        return
    host = request.client.host if request.client else ""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        raise ApiError(
            403, "admin endpoints are loopback-only when no API key is set (serve.api_key)",
            type_="permission_error", code="forbidden",
        )  # fmt: skip


@router.post("/admin/reload")
async def reload(request: Request, state: State) -> dict[str, Any]:
    """{"reloaded": [names whose weights changed], "adapters": [{name, run, sha256, ...}]}."""
    check_admin(request, state)
    async with state.reload_lock:  # one reload at a time
        try:
            changed = await asyncio.to_thread(reload_adapters, state)
        except MlxtuneError as e:  # the old models keep serving
            raise ApiError(409, f"reload failed, still serving the old adapters: {e}") from None
    adapters = [
        {"name": m.name, "run": Path(m.adapter).name, "alias": m.alias, "sha256": m.fingerprint}
        for m in state.models.values()
        if m.adapter
    ]
    return {"reloaded": changed, "adapters": adapters}


def reload_adapters(state: ServeState) -> list[str]:
    """Load every adapter whose resolved file changed, then swap them all in; returns their
    names. Nothing is swapped unless every new one loaded."""
    from mlxtune.io import sha256_file
    from mlxtune.serve.models import load_adapter, mix_and_fuse, resolve_adapters

    cfg = state.cfg
    base = state.models[cfg.serve.base_name].model
    fresh = {}
    for name, path in resolve_adapters(cfg).items():
        old = state.models[name]
        if old.adapter == str(path) and old.fingerprint == sha256_file(
            path / "adapters.safetensors"
        ):
            continue
        fresh[name] = load_adapter(cfg, name, path, base, fuse=not cfg.serve.mix_adapters)
    if not fresh:
        return []
    # a reloaded adapter changes its mixed batch: every member moves to the new one
    current = dict(state.models)
    for name, loaded in mix_and_fuse(cfg, {**current, **fresh}, fresh).items():
        if loaded is not current[name]:
            state.engine.swap(name, loaded)
        if state.embed and name in fresh:  # /v1/embeddings pools the adapter's hidden states
            state.embed.swap(name, loaded, cfg)
    return list(fresh)
