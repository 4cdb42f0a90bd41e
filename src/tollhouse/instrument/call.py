"""``Call``: one provider call from its start to its single ``UsageEvent``.

Library mode has no gateway in the path, so an event's ``duration`` is the
whole call as the application saw it (SDK retries included),
``upstream_duration`` equals it and ``overhead`` is zero; the instrumentation's
own cost is measured by ``bench/instrument_bench.py`` instead. A call is one
upstream attempt (``llm_upstream_requests_total``/``_duration_seconds``): the
SDK's own retries happen inside it, out of sight.

A call ends exactly once: whichever of success, failure, close or finalizer
comes first queues it, and the rest are no-ops. Its event is built, priced and
recorded in a batch a little later (``tollhouse.instrument.drain`` says why);
a scrape or ``Instrumentation.flush()`` records what is queued first.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping
from typing import Any

from tollhouse.accounting.event import NONE, Attempt, Outcome, TokenSource, UsageEvent
from tollhouse.accounting.pricing import cost
from tollhouse.accounting.usage import ZERO_USAGE, Usage
from tollhouse.errors import ErrorType
from tollhouse.instrument.core import Instrumentation, Site

perf = time.perf_counter
_ids = itertools.count(1)
UsageOf = Callable[[Any], Usage | None]  # an answer's ``usage`` attribute → Usage
# How a call ended, as ``Call.end`` saw it: outcome, status, error type, usage, token
# source, response model, request id.
Head = tuple[Outcome, int, ErrorType | None, Usage, TokenSource, str | None, str | None]
# What is queued: the head, the duration, and the whole answer with its usage reader
# when the batch is to read usage, model and id from it (``Call.answered``). Plain
# tuples: they are built per call.
Ending = tuple[Head, float, Any, UsageOf | None]
_ANSWERED: Head = (Outcome.SUCCESS, 200, None, ZERO_USAGE, TokenSource.REPORTED, None, None)


class Call:
    """Bookkeeping for one call; ``end`` queues it, ``event`` turns it into its event."""

    __slots__ = (
        "_inst",
        "_site",
        "counted",
        "done",
        "model",
        "operation",
        "started_at",
        "stream",
        "t0",
        "ttft",
    )

    def __init__(
        self, inst: Instrumentation, where: Site, operation: str, model: str, stream: bool
    ) -> None:
        self._inst = inst
        self._site = where
        self.operation = operation
        self.model = model
        self.stream = stream
        self.ttft: float | None = None
        self.done = False
        self.counted = False  # the batch counted it in ``llm_requests_in_flight``
        inst.started(self)  # the batch (or a scrape) adds it to the in-flight gauge
        self.started_at = time.time()
        self.t0 = perf()

    def first_token(self) -> None:
        """Note the time to first token (the first call wins)."""
        if self.ttft is None:
            self.ttft = perf() - self.t0

    def end(
        self,
        outcome: Outcome,
        *,
        status: int = 200,
        error_type: ErrorType | None = None,
        usage: Usage = ZERO_USAGE,
        source: TokenSource = TokenSource.REPORTED,
        response_model: str | None = None,
        request_id: str | None = None,
        deferred: bool = False,
    ) -> None:
        """Finish the call: stop its clock and queue it; the event is built and recorded
        in the next batch (``tollhouse.instrument.drain``). ``deferred`` (from a
        finalizer) only queues: no lock may be taken there."""
        if self.done:
            return
        self.done = True
        head = (outcome, status, error_type, usage, source, response_model, request_id)
        self._inst.queue(self, (head, perf() - self.t0, None, None), deferred)

    def discard(self) -> None:
        """Forget a call that never left (the SDK refused its arguments): no event. It is
        still queued, as nothing, so a flush that counted it in flight takes it out."""
        if self.done:
            return
        self.done = True
        self._inst.queue(self, None)

    def answered(self, answer: Any, usage_of: UsageOf) -> None:
        """Finish a successful call whose ``answer`` reports its usage: the batch reads
        the usage, model and id from it, so the caller only stops the clock.

        The caller has checked that ``usage_of(answer.usage)`` will find the usage;
        when it will not, the prompt estimate must be taken now, from the request
        as the caller passed it (an application often appends to its ``messages``
        right after a call), through ``end``.
        """
        if self.done:
            return
        self.done = True
        self._inst.queue(self, (_ANSWERED, perf() - self.t0, answer, usage_of))

    def event(self, ending: Ending) -> UsageEvent:
        """The call's ``UsageEvent``, priced (run by the batch, not the caller)."""
        head, duration, answer, usage_of = ending
        outcome, status, error_type, usage, source, response_model, request_id = head
        if answer is not None:  # queued by ``answered``: read the answer now
            usage, response_model, request_id = _read_answer(answer, usage_of)
        inst, where, model = self._inst, self._site, self.model
        price = inst.price(where, model)
        amount = cost(usage, price) if price is not None else None
        if price is None and (usage.input or usage.output):
            inst.prices.warn_unpriced(where.backend, model)
        upstream_model = response_model or model
        attempt = Attempt(
            model, where.backend, where.provider, upstream_model, error_type, duration, False
        )
        # Positional, in field order: calling a class with keywords makes CPython 3.11
        # build a dict of them first, which cost more than the rest of the event
        # (~1 µs for these 24). tests/test_instrument_internals.py checks every field.
        return UsageEvent(
            request_id or f"tollhouse-{next(_ids)}",  # request_id
            self.started_at,  # started_at
            self.operation,  # operation
            model,  # model
            where.backend,  # backend
            where.provider,  # provider
            upstream_model,  # upstream_model
            where.key,  # key
            where.team,  # team
            NONE,  # user
            NONE,  # end_user
            self.stream,  # stream
            outcome,  # outcome
            status,  # status
            error_type,  # error_type
            usage,  # usage
            source,  # token_source
            amount,  # cost
            price.source if price is not None else None,  # price_source
            duration,  # duration
            duration,  # upstream_duration: the call is all upstream
            0.0,  # overhead: no gateway in the path
            self.ttft,  # ttft
            None,  # ratelimit_remaining_requests
            None,  # ratelimit_remaining_tokens
            (attempt,),  # attempts
        )


def _read_answer(answer: Any, usage_of: UsageOf | None) -> tuple[Usage, str | None, str | None]:
    """Usage, response model and id of a whole answer (pydantic: declared fields)."""
    usage = usage_of(getattr(answer, "usage", None)) if usage_of is not None else None
    model = getattr(answer, "model", None)
    rid = getattr(answer, "id", None)
    return (
        ZERO_USAGE if usage is None else usage,
        model if isinstance(model, str) else None,
        rid if isinstance(rid, str) else None,
    )


def model_name(request: Mapping[str, Any]) -> str:
    """The ``model`` a call asked for (its keyword arguments), as a label value."""
    model = request.get("model")
    return model if isinstance(model, str) and model else NONE
