"""Page-load and throughput benchmarks of h2serve beside peer servers (not part of the package)."""
