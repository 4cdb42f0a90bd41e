"""Budgets and rate limits: counters behind one interface, in memory or in Redis."""
