"""A Neo4j (Bolt) graph as a `prepare` source: one Cypher query, one record per returned row.

Uses the official `neo4j` driver (the `graph` extra). Credentials come from environment
variables the config names, never from the file. Every failure (no driver, no server, bad
credentials, a query the server rejects, no rows) is one line naming the source. Rows are
read completely before prepare writes anything, so a failure leaves no partial output.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from functools import cache
from typing import TYPE_CHECKING, Any

from mlxtune.errors import BadData, ConfigError

if TYPE_CHECKING:
    from mlxtune.config import SourceConfig
    from mlxtune.data.sources import Row

INSTALL = "pip install 'mlxtune[graph]'"
CONNECT_TIMEOUT_S = 10.0
PROVENANCE_FIELD = "source"  # canonical records keep `source`: here "neo4j:<elementId>"
LABEL_COUNTS = "MATCH (n) UNWIND labels(n) AS label RETURN label, count(*) AS nodes ORDER BY label"


def _name(src: SourceConfig) -> str:
    return f"{src.uri}" + (f" (database {src.database})" if src.database else "")


def _fail(src: SourceConfig, message: str) -> BadData:
    return BadData(f"{_name(src)}: {message}")  # the issue asks exit 1 for every graph failure


def driver_module() -> Any:
    try:
        import neo4j
    except ImportError:
        raise ConfigError(
            f"prepare.sources: a neo4j source needs the Neo4j driver: {INSTALL}"
        ) from None
    return neo4j


def credentials(src: SourceConfig) -> tuple[str, str] | None:
    """(user, password) from the named environment variables; None when none are named."""
    if not src.user_env and not src.password_env:
        return None
    missing = [v for v in (src.user_env, src.password_env) if v and v not in os.environ]
    if missing:
        raise ConfigError(
            f"prepare.sources: {_name(src)}: environment variable {missing[0]} is not set"
        )
    user = os.environ[src.user_env] if src.user_env else "neo4j"
    password = os.environ[src.password_env] if src.password_env else ""
    return user, password


def check(src: SourceConfig) -> None:
    """What can be known before connecting: the driver, the credentials, the templates."""
    driver_module()
    credentials(src)
    for field_name, text in src.template.items():
        try:
            _environment().from_string(text)
        except Exception as e:  # jinja2.TemplateSyntaxError and friends
            raise ConfigError(
                f"prepare.sources: {_name(src)}: template.{field_name}: {e}"
            ) from None


@cache
def _environment() -> Any:
    from jinja2 import ChainableUndefined
    from jinja2.sandbox import SandboxedEnvironment

    # A missing property renders empty (graphs are ragged); empty answers are filtered later.
    return SandboxedEnvironment(undefined=ChainableUndefined, autoescape=False)


def _connect(src: SourceConfig, timeout: float = CONNECT_TIMEOUT_S) -> Any:
    neo4j = driver_module()
    exceptions = neo4j.exceptions
    auth = credentials(src)
    try:
        driver = neo4j.GraphDatabase.driver(
            src.uri, auth=auth, connection_timeout=timeout, max_connection_pool_size=1
        )
    except (ValueError, exceptions.ConfigurationError) as e:
        raise ConfigError(f"prepare.sources: {_name(src)}: {e}") from None
    try:
        driver.verify_connectivity()
    except exceptions.ServiceUnavailable as e:
        driver.close()
        raise _fail(src, f"cannot connect ({_first_line(e)})") from None
    except (exceptions.AuthError, exceptions.Neo4jError) as e:
        # Servers differ in how they refuse a login; anything failing the handshake is auth.
        driver.close()
        who = f"as {auth[0]!r}" if auth else "without credentials"
        raise _fail(src, f"authentication failed {who} ({_error_text(e)})") from None
    return driver


def _run(
    src: SourceConfig, query: str, params: dict[str, Any], timeout: float = CONNECT_TIMEOUT_S
) -> list[Any]:
    neo4j = driver_module()
    driver = _connect(src, timeout)
    try:
        with driver.session(database=src.database) as session:
            return list(session.run(query, params))
    except neo4j.exceptions.ServiceUnavailable as e:
        raise _fail(src, f"connection lost ({_first_line(e)})") from None
    except neo4j.exceptions.Neo4jError as e:
        raise _fail(src, f"query failed: {_error_text(e)}") from None
    finally:
        driver.close()


def read_graph(src: SourceConfig) -> Iterator[Row]:
    """Rows of the query: node columns become property dicts (or feed `template`), and each
    row's `source` is `neo4j:<elementId>` of its provenance node."""
    from mlxtune.data.sources import Row

    check(src)
    assert src.query
    records = _run(src, src.query, src.params)
    if not records:
        raise _fail(src, "the query returned no rows")
    neo4j = driver_module()
    node_type = neo4j.graph.Node
    for number, record in enumerate(records, 1):
        values = dict(record.items())
        nodes = {k: v for k, v in values.items() if isinstance(v, node_type)}
        if src.node and src.node not in values:
            raise _fail(src, f"node: no column {src.node!r} (have: {', '.join(values)})")
        anchor = nodes.get(src.node or "") or next(iter(nodes.values()), None)
        element_id = anchor.element_id if anchor is not None else values.get("element_id")
        plain = {k: _plain(v) for k, v in values.items() if k not in nodes}
        if src.template:
            context = {**plain, **{k: _node_view(n) for k, n in nodes.items()}}
            data = {k: v for k, v in plain.items() if k != "element_id"}
            for field_name, text in src.template.items():
                data[field_name] = _environment().from_string(text).render(context).strip()
        else:
            data = {k: v for k, v in plain.items() if k != "element_id"}
        if element_id is not None:
            data.setdefault(PROVENANCE_FIELD, f"neo4j:{element_id}")
        yield Row(data, src.uri or src.path, number)


def rows_sha256(rows: list[Row]) -> str:
    """A content hash of what the query returned: the manifest changes when the graph does."""
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row.data, sort_keys=True, default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def label_counts(src: SourceConfig, timeout: float = CONNECT_TIMEOUT_S) -> dict[str, int]:
    """Nodes per label in the source's database (for `status`)."""
    check(src)
    return {str(r["label"]): int(r["nodes"]) for r in _run(src, LABEL_COUNTS, {}, timeout)}


def _node_view(node: Any) -> dict[str, Any]:
    """A node as a template sees it: its properties, plus `labels` and `element_id`."""
    view = {k: _plain(v) for k, v in dict(node).items()}
    view.setdefault("labels", sorted(node.labels))
    view.setdefault("element_id", node.element_id)
    return view


def _plain(value: Any) -> Any:
    """Driver values -> JSON-friendly Python: graph entities to property dicts, temporals to ISO."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "element_id") and hasattr(value, "items"):  # Node, Relationship
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "iso_format"):
        return str(value.iso_format())
    return str(value)


def _error_text(e: Exception) -> str:
    message = getattr(e, "message", None) or _first_line(e)
    code = getattr(e, "code", None)
    return f"{_first_line_of(str(message))}" + (f" [{code}]" if code else "")


def _first_line(e: Exception) -> str:
    return _first_line_of(str(e)) or type(e).__name__


def _first_line_of(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")
