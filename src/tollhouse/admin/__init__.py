"""The admin API (``/admin/v1``): management, usage analytics, audit log, detailed health.

``mount`` wires it into the app's lifespan; ``api`` is the FastAPI app;
``service`` holds the audited operations the API and the CLI share; ``usage``
answers analytics from ``tollhouse.store.analytics``; ``guard`` counts and
throttles failed authentications for the proxy and the admin API alike.
"""
