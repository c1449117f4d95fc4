"""Pure tensor functions of the benchmark: regions, attacks, metrics, random numbers, precision."""
