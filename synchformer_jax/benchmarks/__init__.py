"""Benchmarks and research probes, on top of every other layer: the harness and HLO FLOP counter, the
benchmark suites of `scripts/benchmark.py` and their Markdown rows, the Stage II head probe, and the
synthetic clips' shortcut audit. Nothing below this package imports it."""
