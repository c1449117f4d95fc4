"""Running the benchmark: the loop, run directories, results, compare, provenance."""
