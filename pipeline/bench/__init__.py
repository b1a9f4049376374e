"""Benchmarks: `pipeline bench throughput|latency|scaling|engine` (see docs/BENCHMARKS.md).

Apart from the tests; every figure is printed beside baselines measured in the same run.
"""
