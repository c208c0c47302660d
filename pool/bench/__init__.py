"""Benchmarks and capacity tuning: measure the pool on the machine it runs on."""
