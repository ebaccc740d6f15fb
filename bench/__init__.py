"""Benchmarks: `make bench` (bench_cpu.py) and bench/gpu.sh (gpu_bench.py); see BENCHMARKS.md."""
