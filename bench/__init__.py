"""Benchmarks and their helpers (the agent pool, its event-loop links, the
watch multiplexer). Product packages never import from here."""
