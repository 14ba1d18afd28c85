"""Import litellm once, configured to stay offline except for the LLM calls we ask it to make.

litellm is an optional dependency (``contextkit[llm]``) and slow to import (seconds), so nothing
in this package imports it at module level: ``tokens`` and ``llm`` call :func:`load_litellm`.

What "offline" means here (checked against litellm 1.106's source):
- ``LITELLM_LOCAL_MODEL_COST_MAP=True``: read the bundled model cost map instead of fetching it
  from GitHub at import time (without it, an import with no network spends ~10 s on retries);
- ``LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS=True``: the same for Anthropic's beta-header table;
- ``suppress_debug_info``: no "Give Feedback / Get Help" banners printed on errors;
- ``telemetry = False`` where the attribute still exists (older litellm); 1.106 has none.
The environment variables are set with ``setdefault``, so an operator can still override them.
"""

from __future__ import annotations

import os
import threading
from types import ModuleType

_OFFLINE_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
}

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
