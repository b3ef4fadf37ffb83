"""syncd benchmarks against the ceiling (issue 9): ``python -m bench --size tiny|small|full``."""
