"""Serving ``/metrics`` without stalling the event loop.

Rendering a large registry takes milliseconds of pure Python; it runs in a
worker thread so requests keep flowing while a scrape is rendered.
prometheus_client's values are lock-protected, so a render sees each sample
consistently while the loop keeps updating them. Scrape-time collectors are not:
they read the loop's own objects from this thread, so they must copy a container in
one C call before walking it, and change nothing (``routing_state``; ``snapshot``
reads a snapshot the loop replaces whole). With several workers the
render merges every worker's values (``multiprocess.py``).
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from tollhouse.metrics import multiprocess


async def render(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """Return (body, content type) in the format the scraper asked for."""
    encoder, content_type = choose_encoder(accept)
    shared = multiprocess.directory()
    if shared is not None:  # several workers: merge every worker's metrics
        registry = multiprocess.exposition_registry(registry, shared)
    body = await asyncio.to_thread(encoder, registry)
    return body, content_type
