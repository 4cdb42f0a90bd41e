"""Provider adapters: one module per wire format.

An adapter is a pure translator plus a classifier: it turns an OpenAI-style
request body into an ``UpstreamRequest``, parses the upstream's answer (whole or
streamed) back into OpenAI-style bytes plus ``Usage``, and classifies failures
into ``ErrorType``. It never performs I/O and never imports ``metrics``; the
I/O lives behind the one-method ``Transport`` seam (``tollhouse.providers.base``).
"""
