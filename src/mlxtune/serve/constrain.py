"""`response_format` in serve: the request field -> a per-request grammar constraint.

The format is checked on the event loop (cheap); the grammar is compiled in a worker thread
(llguidance takes milliseconds, longer the first time a model's tokenizer is prepared). A
format that cannot be enforced is a 400 naming it with `param: response_format`, never a
silent fallback to free text. One `structured.Grammars` per served model, made on first use.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from mlxtune.serve.engine import LoadedModel
from mlxtune.serve.wire import ApiError
from mlxtune.structured import Grammars, JsonConstraint, ResponseFormat, ResponseFormatError

PARAM = "response_format"


def requested_format(value: Any) -> ResponseFormat | None:
    """The request's `response_format` (None: free text), or a 400 naming what is wrong."""
    from mlxtune.structured import parse_response_format

    try:
        return parse_response_format(value, where=PARAM)
    except ResponseFormatError as e:
        raise ApiError(400, str(e), param=PARAM) from None
    except RecursionError:  # a hostile schema nested thousands deep
        raise ApiError(400, f"{PARAM}: schema nested too deeply", param=PARAM) from None


class Constraints:
    """Grammar compilers for the served models, one per model, made on first use."""

    def __init__(self) -> None:
        self._grammars: dict[str, Grammars] = {}
        self._lock = threading.Lock()

    def grammars(self, loaded: LoadedModel) -> Grammars:
        with self._lock:
            grammars = self._grammars.get(loaded.name)
            if grammars is None:
                grammars = self._grammars[loaded.name] = Grammars(loaded.tokenizer)
            return grammars

    def build(self, loaded: LoadedModel, fmt: ResponseFormat, max_tokens: int) -> JsonConstraint:
        """A fresh logits processor for one request (blocking: compiles on first sight)."""
        grammars = self.grammars(loaded)
        try:
            return grammars.constraint(fmt, max_tokens=max_tokens)
        except ResponseFormatError as e:
            raise ApiError(400, str(e), param=PARAM) from None

    async def for_request(
        self, loaded: LoadedModel, fmt: ResponseFormat | None, max_tokens: int
    ) -> list[Any]:
        """The request's logits processors: [] for free text, else its constraint, compiled
        off the event loop."""
        if fmt is None:
            return []
        return [await asyncio.to_thread(self.build, loaded, fmt, max_tokens)]
