"""Benchmarks of scoreops: the fused step updates (:mod:`.bench_steps`) and whole samplers (:mod:`.bench_samplers`)."""
