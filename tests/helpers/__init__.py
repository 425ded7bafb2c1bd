"""Shared test helpers: model builders, op cases and oracles' harnesses (imported as `helpers.<module>`)."""
