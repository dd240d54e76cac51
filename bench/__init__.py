"""Benchmarks: ``python -m bench`` measures this service against baselines side by side and prints ratios."""
