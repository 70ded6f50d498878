"""Helpers for benchmarks/vs_boxbackup.py: workload, process measurement, and one driver per system."""
