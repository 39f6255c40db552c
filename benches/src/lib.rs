//! Criterion benchmarks for Herold live in `benches/`; run them with `cargo bench`.
