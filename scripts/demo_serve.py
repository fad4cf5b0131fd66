"""Demo step: start `mlxtune serve`, ask one trained question through the OpenAI client with
the adapter's model name, check that the adapter (not the base) answered, stop the server."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import httpx
from openai import OpenAI

from mlxtune.bench.procs import Server, cli_command, free_port
from mlxtune.config import load_config
from mlxtune.errors import MlxtuneError


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", "--config", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    cfg = load_config(args.config)
    adapter_name = next(iter(cfg.serve.adapters))
    record = json.loads((cfg.data.dir / "train.jsonl").read_text().splitlines()[0])
    question = [m for m in record["messages"] if m["role"] != "assistant"]
    port = free_port()
    # log=None: the server's own output stays on the demo's terminal.
    cmd = [*cli_command(), "serve", "-c", args.config, "--port", str(port)]
    server = Server(cmd, port, None, name="mlxtune serve")
    base_url = server.url
    try:
        try:
            server.start(120)
        except MlxtuneError as e:
            print(e, file=sys.stderr)
            return 1
        client = OpenAI(base_url=f"{base_url}/v1", api_key=cfg.serve.resolved_api_key() or "none")
        models = [m.id for m in client.models.list().data]
        answers = {}
        for name in (adapter_name, cfg.serve.base_name):
            resp = client.chat.completions.create(
                model=name, messages=question, max_tokens=48, temperature=0.0
            )
            answers[name] = {"model": resp.model, "text": resp.choices[0].message.content}
        embedded = client.embeddings.create(model=adapter_name, input=question[-1]["content"])
        health = httpx.get(f"{base_url}/health", timeout=5).json()
    finally:
        server.stop(timeout=30)
    adapted = answers[adapter_name]["text"] or ""
    keywords = record.get("keywords", [])
    result = {
        "models": models,
        "question": question[-1]["content"],
        "keywords": keywords,
        "answers": answers,
        "adapter_answered": answers[adapter_name]["model"] == adapter_name,
        "keywords_found": all(k.lower() in adapted.lower() for k in keywords),
        "differs_from_base": adapted != answers[cfg.serve.base_name]["text"],
        "embedding": {
            "model": embedded.model,
            "dimensions": len(embedded.data[0].embedding),
            "prompt_tokens": embedded.usage.prompt_tokens,
        },
        "health": health,
        "server_exit_code": server.returncode,
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"models: {models}")
    print(f"Q: {result['question']}")
    for a in answers.values():
        print(f"A [{a['model']}]: {a['text']}")
    e = result["embedding"]
    print(f"embedding [{e['model']}]: {e['dimensions']} floats, {e['prompt_tokens']} tokens")
    ok = result["adapter_answered"] and result["differs_from_base"]
    if not ok:
        print("the adapter did not answer, or answered like the base model", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
