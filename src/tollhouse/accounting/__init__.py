"""Accounting: the UsageEvent every sink consumes, token estimates and pricing."""
