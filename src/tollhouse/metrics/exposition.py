"""Serving ``/metrics`` without stalling the event loop.

Rendering a large registry takes milliseconds of pure Python; it runs in a
worker thread so requests keep flowing while a scrape is rendered.
prometheus_client's values are lock-protected, so a render sees each sample
consistently while the loop keeps updating them.
"""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder


async def render(registry: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """Return (body, content type) in the format the scraper asked for."""
    encoder, content_type = choose_encoder(accept)
    body = await asyncio.to_thread(encoder, registry)
    return body, content_type
