"""Import litellm once, configured to stay offline except for the LLM calls we ask it to make.

litellm is an optional dependency (``contextkit[llm]``) and slow to import (seconds), so nothing
in this package imports it at module level: ``tokens`` and ``llm`` call :func:`load_litellm`.
:func:`model_cost` reads litellm's model list without that import when it has not happened yet
(``plan`` checks model names with it and should not pay seconds for a lookup).

What "offline" means here (checked against litellm 1.106's source):
- ``LITELLM_LOCAL_MODEL_COST_MAP=True``: read the bundled model cost map instead of fetching it
  from GitHub at import time (without it, an import with no network spends ~10 s on retries);
- ``LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS=True``: the same for Anthropic's beta-header table;
- ``suppress_debug_info``: no "Give Feedback / Get Help" banners printed on errors;
- ``telemetry = False`` where the attribute still exists (older litellm); 1.106 has none.
The environment variables are set with ``setdefault``, so an operator can still override them.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

_OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
}

# The model list litellm ships and reads itself under LITELLM_LOCAL_MODEL_COST_MAP.
_BUNDLED_COST_MAP = "model_prices_and_context_window_backup.json"

_lock = threading.Lock()
_module: ModuleType | None = None


def load_litellm() -> ModuleType:
    """Return the configured ``litellm`` module; raise ``ImportError`` when it is not installed."""
    global _module
    if _module is not None:
        return _module
    with _lock:
        if _module is None:
            for key, value in _OFFLINE_ENV.items():
                os.environ.setdefault(key, value)
            import litellm

            litellm.suppress_debug_info = True
            if hasattr(litellm, "telemetry"):
                litellm.telemetry = False
            _module = litellm
    return _module


def model_cost() -> dict[str, Any] | None:
    """litellm's model list (``litellm.model_cost``: name -> ``{"litellm_provider", "mode"...}``),
    offline. Read from litellm's bundled file while litellm is not imported yet (0.1 s instead of
    seconds); None when litellm is not installed."""
    loaded = _module or sys.modules.get("litellm")
    cost = getattr(loaded, "model_cost", None)
    if isinstance(cost, dict) and cost:
        return cost
    return _bundled_model_cost()


@functools.cache
def _bundled_model_cost() -> dict[str, Any] | None:
    spec = importlib.util.find_spec("litellm")
    if spec is None or spec.origin is None:
        return None
    try:
        with open(Path(spec.origin).parent / _BUNDLED_COST_MAP, encoding="utf-8") as file:
            data = json.load(file)
    except (OSError, ValueError):  # a litellm without the file: ask litellm itself
        try:
            return dict(load_litellm().model_cost)
        except ImportError:
            return None
    return data if isinstance(data, dict) else None
