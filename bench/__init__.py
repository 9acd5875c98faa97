"""Benchmarks for ConsentLine: webhook throughput against a bare endpoint, scale, query counts."""
