"""The OpenAI-compatible routes. Knows no provider's wire format: adapters do that."""
