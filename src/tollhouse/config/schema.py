"""The config schema. Every model forbids unknown fields: a typo is an error, not a no-op.

``docs/configuration.md`` documents each field; ``tests/test_config.py``
fails when a field exists here and not there (or the other way round).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ProviderName = Literal["openai", "azure", "anthropic", "mock"]

# genai-prices provider ids used when a backend does not name one.
DEFAULT_PRICE_PROVIDER: dict[str, str | None] = {
    "openai": "openai",
    "azure": "azure",
    "anthropic": "anthropic",
    "mock": None,
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Prices(_Strict):
    """USD per one million tokens. Any field left out falls back as documented."""

    input: Decimal = Field(ge=0)
    output: Decimal = Field(ge=0)
    cached_input: Decimal | None = Field(default=None, ge=0)
    cache_write_input: Decimal | None = Field(default=None, ge=0)


class Timeouts(_Strict):
    """Seconds. ``read`` bounds a whole non-streamed answer and the wait for a stream's
    first byte; ``stream_idle`` bounds the silence between two stream chunks."""

    connect: float = Field(default=10.0, gt=0)
    read: float = Field(default=600.0, gt=0)
    stream_idle: float = Field(default=120.0, gt=0)


class HealthCheckConfig(_Strict):
    """Active probes: ``GET`` the backend's model list every ``interval`` seconds. A backend
    whose probe fails leaves rotation until a probe succeeds again."""

    interval: float = Field(default=30.0, gt=0)
    timeout: float = Field(default=5.0, gt=0)


class BackendConfig(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.:-]+$")
    provider: ProviderName
    base_url: str | None = None
    api_key_env: str | None = None
    api_version: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    max_connections: int = Field(default=1000, ge=1)
    http_client: Literal["h1", "aiohttp"] = "h1"
    stream_usage: bool = True
    default_max_tokens: int = Field(default=4096, ge=1)
    prices: Prices | None = None
    price_provider: str | None = None
    health_check: HealthCheckConfig | None = None

    @model_validator(mode="after")
    def _needs_url(self) -> BackendConfig:
        if self.provider != "mock" and not self.base_url:
            raise ValueError(f"base_url is required for provider {self.provider!r}")
        if self.provider == "azure" and not self.api_version:
            raise ValueError("api_version is required for provider 'azure'")
        return self

    def genai_price_provider(self) -> str | None:
        """The genai-prices provider id to look prices up under."""
        if self.price_provider is not None:
            return self.price_provider
        return DEFAULT_PRICE_PROVIDER[self.provider]


ErrorClass = Literal[
    "rate_limit", "timeout", "network", "server_error", "invalid_response", "context_length",
    "content_filter", "any",
]  # fmt: skip
RETRYABLE: tuple[ErrorClass, ...] = ("rate_limit", "timeout", "network", "server_error")
Strategy = Literal["weighted", "least_in_flight", "lowest_latency", "lowest_cost", "priority"]


class DeploymentConfig(_Strict):
    """One place a public model can be served: a backend and its upstream model id."""

    backend: str
    model: str = Field(min_length=1, description="the upstream model id (Azure: the deployment)")
    weight: float = Field(default=1.0, gt=0)
    priority: int = Field(default=0, ge=0)
    prices: Prices | None = None


class FallbackConfig(_Strict):
    """When the group fails with one of ``when``, try the model groups in ``to``, in order.
    (Not ``on``: YAML 1.1 reads a bare ``on`` key as the boolean true.)"""

    when: list[ErrorClass] = Field(min_length=1)
    to: list[str] = Field(min_length=1)


class RetryConfig(_Strict):
    """Retries within a group, only where safe: before any response (and, for streams,
    before the first chunk reached the client). Exponential backoff with full jitter;
    an upstream ``Retry-After`` is honoured up to ``max_retry_after``."""

    attempts: int = Field(default=0, ge=0, le=10)
    backoff: float = Field(default=0.1, ge=0)
    max_backoff: float = Field(default=5.0, ge=0)
    max_retry_after: float = Field(default=10.0, ge=0)
    when: list[ErrorClass] = Field(default_factory=lambda: list(RETRYABLE))


class CooldownConfig(_Strict):
    """A deployment that fails more than ``failure_rate`` of at least ``min_calls`` calls in
    ``window`` seconds, or answers 429, leaves rotation for ``period`` seconds."""

    enabled: bool = True
    failure_rate: float = Field(default=0.5, gt=0, le=1)
    min_calls: int = Field(default=5, ge=1)
    window: float = Field(default=60.0, gt=0)
    period: float = Field(default=30.0, gt=0)
    on_rate_limit: bool = True


class ModelConfig(_Strict):
    """A public model name: one deployment (``backend`` + ``model``) or a group of them."""

    name: str = Field(min_length=1)
    backend: str | None = None
    model: str | None = Field(default=None, min_length=1, description="the upstream model id")
    prices: Prices | None = None
    deployments: list[DeploymentConfig] | None = Field(default=None, min_length=1)
    strategy: Strategy = "weighted"
    fallbacks: list[FallbackConfig] = Field(default_factory=list)
    retries: RetryConfig = Field(default_factory=RetryConfig)
    cooldown: CooldownConfig = Field(default_factory=CooldownConfig)

    @model_validator(mode="after")
    def _one_shape(self) -> ModelConfig:
        single = self.backend is not None or self.model is not None
        if single and self.deployments is not None:
            raise ValueError("give either backend + model, or deployments, not both")
        if not single and self.deployments is None:
            raise ValueError("give backend + model, or a list of deployments")
        if single and (self.backend is None or self.model is None):
            raise ValueError("backend and model go together")
        if self.deployments is not None and self.prices is not None:
            raise ValueError("with deployments, set prices on each deployment")
        return self

    def group(self) -> list[DeploymentConfig]:
        """The deployments of this public model (one, for the single shape)."""
        if self.deployments is not None:
            return self.deployments
        assert self.backend is not None and self.model is not None
        return [DeploymentConfig(backend=self.backend, model=self.model, prices=self.prices)]


class ServerConfig(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(default=4000, ge=0, le=65535)
    metrics_path: str = "/metrics"
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    access_log: bool = True
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    on_disconnect: Literal["finish", "cancel"] = "finish"
    shutdown_timeout: float = Field(default=30.0, ge=0)

    @field_validator("metrics_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        taken = ("/v1", "/health", "/chat", "/embeddings", "/models")
        if not value.startswith("/") or any(value == t or value.startswith(t + "/") for t in taken):
            raise ValueError(
                "must be an absolute path outside /v1, /health and the other API routes"
            )
        return value


Period = str  # "hourly" | "daily" | "weekly" | "monthly" | a duration such as "30d", "12h", "90m"
_PERIOD = r"^(hourly|daily|weekly|monthly|[1-9][0-9]*[mhdw])$"


class AuthConfig(_Strict):
    """Who may call the gateway. Keys are virtual keys stored hashed in the store."""

    required: bool = True
    admin_key_env: str | None = "TOLLHOUSE_ADMIN_KEY"
    cache_ttl: float = Field(default=30.0, ge=0)
    stale_if_error: float = Field(default=300.0, ge=0)


class StoreConfig(_Strict):
    """Keys, teams, users and the spend ledger (SQLite file by default, PostgreSQL by URL)."""

    url: str = "sqlite+aiosqlite:///tollhouse.db"
    migrate_on_start: bool = True
    timeout: float = Field(default=10.0, gt=0)


class LedgerConfig(_Strict):
    """The spend ledger writer: batched off the request path, never dropping a row."""

    batch_size: int = Field(default=500, ge=1)
    flush_interval: float = Field(default=0.5, gt=0)
    retry_interval: float = Field(default=1.0, gt=0)


class LimitsConfig(_Strict):
    """Where budget and rate-limit counters live: one process (memory) or shared (redis)."""

    backend: Literal["memory", "redis"] = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "tollhouse:"
    redis_timeout: float = Field(default=5.0, gt=0)
    reserve_output_tokens: int = Field(default=4096, ge=1)
    init_gauges: bool = False


class BudgetConfig(_Strict):
    """A spend cap in USD for one backend, one provider, or every end user by default."""

    scope: Literal["backend", "provider", "end_user"]
    name: str | None = None  # backend or provider name; None for the end-user default
    max_usd: Decimal = Field(gt=0)
    soft_usd: Decimal | None = Field(default=None, gt=0)
    period: Period = Field(default="monthly", pattern=_PERIOD)

    @model_validator(mode="after")
    def _named(self) -> BudgetConfig:
        if self.scope != "end_user" and not self.name:
            raise ValueError(f"a {self.scope} budget needs a name")
        if self.soft_usd is not None and self.soft_usd > self.max_usd:
            raise ValueError("soft_usd must not exceed max_usd")
        return self


class RateLimitConfig(_Strict):
    """Requests and tokens per minute for one backend."""

    scope: Literal["backend"]
    name: str
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)


class CacheConfig(_Strict):
    """Exact-match response cache. Off unless enabled here or on a key (``--cache``)."""

    enabled: bool = False
    backend: Literal["memory", "redis"] = "memory"
    ttl: float = Field(default=300.0, gt=0)
    max_entries: int = Field(default=10_000, ge=1)
    scope: Literal["global", "team", "key"] = "team"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "tollhouse:cache:"


class Config(_Strict):
    server: ServerConfig = Field(default_factory=ServerConfig)
    auth: AuthConfig = Field(default_factory=AuthConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    ledger: LedgerConfig = Field(default_factory=LedgerConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    budgets: list[BudgetConfig] = Field(default_factory=list)
    rate_limits: list[RateLimitConfig] = Field(default_factory=list)
    cache: CacheConfig = Field(default_factory=CacheConfig)
    backends: list[BackendConfig] = Field(min_length=1)
    models: list[ModelConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _references(self) -> Config:
        """Checks across sections, all of them: every problem is reported at once (one
        per line; the loader lists each as its own problem)."""
        problems = self._reference_problems()
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _reference_problems(self) -> list[str]:
        problems: list[str] = []
        names = [b.name for b in self.backends]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            problems.append(f"backend names must be unique; repeated: {', '.join(dupes)}")
        models = [m.name for m in self.models]
        dupes = sorted({n for n in models if models.count(n) > 1})
        if dupes:
            problems.append(f"model names must be unique; repeated: {', '.join(dupes)}")
        known = set(names)
        providers = {b.provider for b in self.backends}
        for i, b in enumerate(self.budgets):
            if b.scope == "backend" and b.name not in known:
                problems.append(f"budgets[{i}]: backend {b.name!r} is not defined")
            if b.scope == "provider" and b.name not in providers:
                problems.append(f"budgets[{i}]: no backend uses provider {b.name!r}")
            if b.scope == "end_user" and b.name is not None:
                problems.append(
                    f"budgets[{i}]: the end_user budget applies to every end user; drop 'name'"
                )
        if sum(1 for b in self.budgets if b.scope == "end_user") > 1:
            problems.append("budgets: only one end_user budget (the default for every end user)")
        for i, r in enumerate(self.rate_limits):
            if r.name not in known:
                problems.append(f"rate_limits[{i}]: backend {r.name!r} is not defined")
            if r.rpm is None and r.tpm is None:
                problems.append(f"rate_limits[{i}]: set rpm, tpm or both")
        public = set(models)
        for i, model in enumerate(self.models):
            for dep in model.group():
                if dep.backend not in known:
                    problems.append(
                        f"models[{i}] ({model.name!r}): backend {dep.backend!r} is not defined "
                        f"(defined: {', '.join(dict.fromkeys(names))})"
                    )
            for fallback in model.fallbacks:
                for target in fallback.to:
                    if target not in public or target == model.name:
                        problems.append(
                            f"models[{i}] ({model.name!r}): fallback {target!r} must be another "
                            "defined model"
                        )
        return problems

    def backend(self, name: str) -> BackendConfig:
        return next(b for b in self.backends if b.name == name)
