//! Benchmark crate: see benches/README.md.
