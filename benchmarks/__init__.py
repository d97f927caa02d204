"""labkit's benchmarks: `make bench` (python -m benchmarks) writes results/bench/*.json and prints a table."""
