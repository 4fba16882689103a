"""The router: client-facing API, worker registry, placement. Never imports torch."""
