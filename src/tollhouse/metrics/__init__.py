"""Metrics: the catalog of every metric, the recorder (UsageEvent → metrics), exposition."""
