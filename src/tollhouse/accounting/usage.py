"""Token usage as reported by a provider (or estimated by the gateway).

Conventions, the same for every provider so sums across providers mean one thing:

* ``input`` is *all* prompt tokens, cached and cache-write ones included
  (OpenAI's ``prompt_tokens``; Anthropic's ``input_tokens`` plus its cache read
  and cache creation tokens).
* ``cached_input`` and ``cache_write_input`` are the parts of ``input`` read from
  or written to the provider's prompt cache.
* ``output`` is all generated tokens, ``reasoning`` the part of it spent thinking.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Usage:
    input: int = 0
    output: int = 0
    cached_input: int = 0
    cache_write_input: int = 0
    reasoning: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.input + other.input,
            self.output + other.output,
            self.cached_input + other.cached_input,
            self.cache_write_input + other.cache_write_input,
            self.reasoning + other.reasoning,
        )


ZERO_USAGE = Usage()
