"""Benchmarks of DESIGN §7 targets, as ratios against baselines measured in the same run: `python -m bench`."""
