"""The four services, one ASGI app each."""
