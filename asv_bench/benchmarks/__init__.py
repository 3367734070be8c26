"""normcore's airspeed velocity (asv) benchmark suite; see asv_bench/README.md."""
