"""Vision demo step: start `mlxtune serve`, send the first test image as a base64 `image_url`
through the official openai client, and check that the served answer is, token for token, the
one evaluate generated for the same image (its predictions.jsonl); then ask again streaming
and check that the pieces, sent as they were generated, join to the same answer."""

from __future__ import annotations

import argparse
import base64
import json
import sys
from pathlib import Path
from typing import Any

from openai import OpenAI

from mlxtune.bench.procs import cli_command, running_server
from mlxtune.config import load_config
from mlxtune.errors import MlxtuneError
from mlxtune.rundir import resolve_run


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("-c", "--config", required=True)
    args = parser.parse_args()
    cfg = load_config(args.config)
    name = next(iter(cfg.serve.adapters))
    run = resolve_run(cfg.serve.adapters[name], cfg, field=f"serve.adapters.{name}")
    predicted = json.loads((run.eval_dir / "predictions.jsonl").read_text().splitlines()[0])
    record = json.loads((cfg.data.dir / "test.jsonl").read_text().splitlines()[0])
    image = Path(record["images"][0])
    data_uri = "data:image/png;base64," + base64.b64encode(image.read_bytes()).decode()
    question = record["messages"][0]["content"]

    def command(port: int) -> list[str]:
        return [*cli_command(), "serve", "-c", args.config, "--port", str(port)]

    try:
        with running_server(command, None, 120, name="mlxtune serve") as server:
            client = OpenAI(
                base_url=f"{server.url}/v1", api_key=cfg.serve.resolved_api_key() or "-"
            )
            content = [
                {"type": "image_url", "image_url": {"url": data_uri}},
                {"type": "text", "text": question},
            ]
            messages: Any = [{"role": "user", "content": content}]
            resp = client.chat.completions.create(
                model=name,
                messages=messages,
                max_tokens=cfg.evaluate.max_tokens,
                temperature=0.0,
            )
            stream = client.chat.completions.create(
                model=name, messages=messages, max_tokens=cfg.evaluate.max_tokens, stream=True
            )
            pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    except MlxtuneError as e:
        print(e, file=sys.stderr)
        return 1
    served = resp.choices[0].message.content or ""
    same = served == predicted["adapter"]
    streamed = "".join(pieces)
    print(f"image      {image.name} (expected {record['messages'][-1]['content']})")
    print(f"served     {resp.model}: {served!r}")
    print(f"evaluate   {predicted['adapter']!r}")
    print(f"streamed   {sum(1 for p in pieces if p)} pieces, joined equal: {streamed == served}")
    print(f"served answer == evaluate's answer for the same image: {same}")
    return 0 if same and streamed == served else 1


if __name__ == "__main__":
    sys.exit(main())
