"""`mlxtune verify RUN --endpoint URL`: prove a deployment serves the run.

Two checks. (1) The server's /health (mlxtune serve's) names the run's adapter sha256; a server
without that /health (mlx_lm.server, any other OpenAI-compatible one) skips this check and says
so. (2) N questions of the run's test split, asked greedily at the endpoint, are answered
token for token as the run answers them here (`modeling.load_model` + `generation`). On a
mismatch the base model is asked too, to tell "serves the base" from "serves something else".
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlxtune.errors import MlxtuneError, UsageError
from mlxtune.io import sha256_file
from mlxtune.rundir import RunDir, resolve_run

if TYPE_CHECKING:
    from mlxtune.config import Config


@dataclass
class Mismatch:
    index: int
    question: str
    expected: str
    got: str
    expected_tokens: int
    got_tokens: int | None
    matches_base: bool = False

    def diff(self) -> list[str]:
        """The two answers, word by word, as a unified diff."""
        return list(
            difflib.unified_diff(
                self.expected.split(), self.got.split(), "run", "endpoint", lineterm="", n=2
            )
        )


@dataclass
class VerifyResult:
    run: str
    adapter_sha256: str
    endpoint: str
    model: str
    health: str  # "ok", "skipped: ...", or what is wrong
    compared: int
    equal: int
    mismatch: Mismatch | None = None
    served: list[dict[str, Any]] = field(default_factory=list)  # /health's adapters

    @property
    def passed(self) -> bool:
        return self.mismatch is None and not self.health_failed

    @property
    def health_failed(self) -> bool:
        return not (self.health == "ok" or self.health.startswith("skipped"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "run": self.run, "adapter_sha256": self.adapter_sha256, "endpoint": self.endpoint,
            "model": self.model, "health": self.health, "compared": self.compared,
            "equal": self.equal, "passed": self.passed,
            "mismatch": None if self.mismatch is None else {
                **self.mismatch.__dict__, "diff": self.mismatch.diff()
            },
        }  # fmt: skip


def _check_health(
    client: Any, base: str, sha: str, model: str | None
) -> tuple[str, str | None, list[dict[str, Any]]]:
    """(verdict, the served name holding the run's adapter, /health's adapters)."""
    try:
        r = client.get(base + "/health")
        body = r.json() if r.status_code == 200 else None
    except ValueError:
        body = None
    adapters = body.get("adapters") if isinstance(body, dict) else None
    if not isinstance(adapters, list):
        return "skipped: /health does not list adapters (not mlxtune serve)", None, []
    holding = [a.get("name") for a in adapters if a.get("sha256") == sha]
    if model is not None:
        if model in holding:
            return "ok", model, adapters
        serving = next((a for a in adapters if a.get("name") == model), None)
        what = f"sha256 {serving.get('sha256')}" if serving else "no adapter"
        return f"/health: {model!r} serves {what}, not the run's {sha[:12]}", None, adapters
    if holding:
        return "ok", str(holding[0]), adapters
    names = ", ".join(f"{a.get('name')}={str(a.get('sha256'))[:12]}" for a in adapters)
    return f"/health: no served adapter has the run's sha256 {sha[:12]} ({names})", None, adapters


def verify(
    cfg: Config, ref: str | None, endpoint: str, *, model: str | None = None, n: int = 8
) -> VerifyResult:
    """Check `endpoint` against run `ref`; UsageError when it cannot be checked at all."""
    import httpx

    from mlxtune import endpoint as server
    from mlxtune.evaluate import load_examples
    from mlxtune.generation import detokenize, greedy_answers
    from mlxtune.modeling import load_model

    try:
        run = resolve_run(ref, cfg, field="run")
    except MlxtuneError as e:
        raise UsageError(str(e)) from None
    sha = sha256_file(run.adapter_file)
    base = server.server_root(endpoint)
    max_tokens = cfg.evaluate.max_tokens
    with server.client(cfg.serve.resolved_api_key()) as client:
        try:
            health, holder, served = _check_health(client, base, sha, model)
        except httpx.HTTPError as e:
            raise UsageError(f"--endpoint: {base}: {type(e).__name__}: {e}") from None
        name = model or holder
        if name is None:
            raise UsageError(f"--model: required ({health})")
        examples = load_examples(_data_dir(cfg, run), "test", n)
        questions = [ex.prompt for ex in examples]
        model_cfg = cfg.model.model_copy(
            update={"path": run.read_run().get("base_model") or cfg.model.path}
        )
        local_model, tokenizer, _ = load_model(model_cfg, run.root)
        expected = greedy_answers(local_model, tokenizer, questions, max_tokens)
        del local_model
        mismatch, equal = None, 0
        chat = base + "/v1/chat/completions"
        for i, (messages, tokens) in enumerate(zip(questions, expected, strict=True)):
            body = {
                "model": name,
                "messages": messages,
                "temperature": 0.0,
                "max_tokens": max_tokens,
            }
            reply = server.ask(client, chat, body, label="--endpoint: ")
            got, got_tokens = reply.text, reply.completion_tokens
            want = detokenize(tokenizer, tokens)
            if got == want:  # token counts differ by server (some count the EOS)
                equal += 1
                continue
            mismatch = Mismatch(i, messages[-1]["content"], want, got, len(tokens), got_tokens)
            base_model, base_tok, _ = load_model(model_cfg)
            (base_tokens,) = greedy_answers(base_model, base_tok, [messages], max_tokens)
            mismatch.matches_base = detokenize(base_tok, base_tokens) == got
            break
    return VerifyResult(
        run.name, sha, endpoint, name, health, equal + (mismatch is not None), equal,
        mismatch, served,
    )  # fmt: skip


def _data_dir(cfg: Config, run: RunDir) -> Path:
    """The run's own data (run.json's data_dir) when it is still there, else data.dir."""
    recorded = run.read_run().get("data_dir")
    if recorded and (Path(recorded) / "test.jsonl").is_file():
        return Path(recorded)
    return cfg.data.dir
