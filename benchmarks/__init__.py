"""Benchmarks, HTTP load and soak scripts (not part of the package, not run in CI)."""
