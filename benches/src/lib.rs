//! pvio benchmark harness: shared helpers for the benchmark runners in `src/bin/`.
