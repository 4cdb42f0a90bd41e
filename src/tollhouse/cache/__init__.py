"""Exact-match response cache: the same request, the same answer, no upstream call.

``cache_key`` names a request by what can change its answer; ``opted_out`` and
``strip_flag`` handle the client's ``Cache-Control``/``"cache"`` opt-out;
answers are stored as ``CachedAnswer`` (a ``chat.completion`` body with the
usage and cost of the call that produced it) in a ``ResponseCache``:
``MemoryCache`` by default, ``RedisCache`` when replicas should share one.
A streamed answer is stored via ``from_stream`` and a streaming hit replayed
with ``to_sse``.
"""

from tollhouse.cache.answer import CachedAnswer, decode, encode, to_sse
from tollhouse.cache.keys import IGNORED, cache_key, opted_out, strip_flag
from tollhouse.cache.rebuild import from_stream
from tollhouse.cache.store import MemoryCache, RedisCache, ResponseCache

__all__ = [
    "IGNORED",
    "CachedAnswer",
    "MemoryCache",
    "RedisCache",
    "ResponseCache",
    "cache_key",
    "decode",
    "encode",
    "from_stream",
    "opted_out",
    "strip_flag",
    "to_sse",
]
