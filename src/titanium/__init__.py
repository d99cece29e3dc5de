"""Titanium: a microservice blog platform on SQLite or PostgreSQL."""

__version__ = "0.1.0"
