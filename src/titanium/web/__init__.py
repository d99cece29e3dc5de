"""What every service shares: request context, errors, probes, metrics, HTTP client."""
