//! Shared helpers for the benchmarks live in the bench files; see `benches/`.
