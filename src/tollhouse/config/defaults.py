"""The embedded default config: one in-process ``mock`` backend, so ``tollhouse serve``
answers (and shows metrics) with no API key and no file.

The mock's behaviour comes from the upstream model id (see
``tollhouse.providers.mock``); the public names below show the useful ones.
"""

from __future__ import annotations

from typing import Any

DEFAULT_CONFIG: dict[str, Any] = {
    # Open by default so the first request works with no key; any key created with
    # `tollhouse keys create` is still recognised and its budgets and limits apply.
    "auth": {"required": False},
    "backends": [
        {
            "name": "mock",
            "provider": "mock",
            # Prices make the default setup show real cost numbers.
            "prices": {"input": "1.00", "output": "2.00", "cached_input": "0.50"},
        }
    ],
    "models": [
        {"name": "mock-chat", "backend": "mock", "model": "echo"},
        {"name": "mock-embed", "backend": "mock", "model": "embed"},
        {"name": "mock-slow", "backend": "mock", "model": "echo-delay-500-chunkdelay-50"},
        {"name": "mock-fail-429", "backend": "mock", "model": "fail-429"},
        {"name": "mock-fail-500", "backend": "mock", "model": "fail-500"},
        {"name": "mock-timeout", "backend": "mock", "model": "hang"},
        {"name": "mock-drop", "backend": "mock", "model": "drop-after-3"},
    ],
}
