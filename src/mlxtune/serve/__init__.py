"""`mlxtune serve`: an OpenAI-compatible server that really serves the adapter.

Unlike `mlx_lm.server`, every model it can answer with is named in the config and loaded at
start (the base plus each adapter); a request picks one by name, the response says which one
answered, an unknown name is a 404, and no request can make the server load a path. A configured
adapter that fails to load stops the server from starting.

  server.py   serve(cfg): bind, run uvicorn until a signal, drain -> ServeResult
  app.py      create_app(cfg, models=None): state, lifespan, error handlers, guards
  guard.py    the key (before the body), body size/time, header timeout and connection cap
  routes.py   the endpoints, one small handler each, state through `state: State`
  wire.py     OpenAI request bodies and response shapes, pure functions
  engine.py   the model worker: continuous batching, one BatchGenerator per model
  models.py   serve.adapters -> run directories -> loaded models sharing the base weights
  state.py    ServeState (what the routes see) and its bookkeeping per request
  usage.py    the SQLite usage log;   metrics.py   the Prometheus metrics
"""

from mlxtune.serve.app import create_app
from mlxtune.serve.engine import Engine, GenRequest, LoadedModel, QueueFull
from mlxtune.serve.models import default_model_name, load_models, resolve_adapters, usage_db_path
from mlxtune.serve.server import ServeResult, serve
from mlxtune.serve.state import ServeState
from mlxtune.serve.usage import UsageLog

__all__ = [
    "Engine",
    "GenRequest",
    "LoadedModel",
    "QueueFull",
    "ServeResult",
    "ServeState",
    "UsageLog",
    "create_app",
    "default_model_name",
    "load_models",
    "resolve_adapters",
    "serve",
    "usage_db_path",
]
