"""Benchmarks against nnU-Net v2 (not tests): each script writes bench/results/<name>.json and .md."""
