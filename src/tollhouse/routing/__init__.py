"""Routing: public model names → deployments (backend + upstream model)."""
