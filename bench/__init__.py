"""Benchmarks: each prints one JSON object, comparing side by side in one run."""
