"""Benchmark scripts (not tests): print tables, write JSON under bench/results/."""
