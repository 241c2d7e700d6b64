//! Seeded fuzzing with proptest: every target runs a short, reproducible run in the test
//! suite, and as long as asked with `WTB_FUZZ_SECONDS` (see `benches/fuzz_long.sh`).
//!
//! - `WTB_FUZZ_SECONDS=N`: runs of `cases` inputs from seeds `WTB_FUZZ_SEED`,
//!   `WTB_FUZZ_SEED + 1`, ... until N seconds have passed;
//! - otherwise one run of `cases` inputs from seed `WTB_FUZZ_SEED` (default 0).
//!
//! A failing input (a panic, or an error the check refuses) is shrunk by proptest and
//! reported with its seed.

use std::fmt::Debug;
use std::time::Instant;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};

/// What one target's run tried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FuzzReport {
    /// Inputs tried.
    pub inputs: u64,
    /// Seconds taken.
    pub seconds: f64,
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// Runs `check` on inputs from `strategy` (see the module documentation for the run's
/// length and seeds); panics with the shrunk failing input and its seed. Prints a line
/// `fuzz <target>: <inputs> inputs in <seconds> s, no failure`.
pub fn fuzz<S>(
    target: &str,
    cases: u32,
    strategy: S,
    check: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> FuzzReport
where
    S: Strategy,
    S::Value: Debug,
{
    let budget: Option<f64> = env_number("WTB_FUZZ_SECONDS");
    let mut seed: u64 = env_number("WTB_FUZZ_SEED").unwrap_or(0);
    let started = Instant::now();
    let mut inputs = 0u64;
    loop {
        let config = Config {
            cases,
            failure_persistence: None,
            max_shrink_iters: 2_000,
            ..Config::default()
        };
        let mut seed_bytes = [0u8; 32];
        seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
        let mut runner = TestRunner::new_with_rng(config, rng);
        if let Err(failure) = runner.run(&strategy, &check) {
            panic!("fuzz {target}, seed {seed}: {failure}");
        }
        inputs += u64::from(cases);
        seed += 1;
        match budget {
            Some(seconds) if started.elapsed().as_secs_f64() < seconds => continue,
            _ => break,
        }
    }
    let report = FuzzReport {
        inputs,
        seconds: started.elapsed().as_secs_f64(),
    };
    eprintln!(
        "fuzz {target}: {} inputs in {:.1} s, no failure",
        report.inputs, report.seconds
    );
    report
}

/// One change to a valid file.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Keep only the first `n` bytes (modulo the length).
    Truncate(usize),
    /// Flip these bits (byte position modulo the length, bit 0..8).
    FlipBits(Vec<(usize, u8)>),
    /// Overwrite bytes from a position.
    Overwrite(usize, Vec<u8>),
    /// Insert bytes at a position.
    Insert(usize, Vec<u8>),
    /// Replace the whole file.
    Replace(Vec<u8>),
    /// Set a byte to an extreme value (0x00, 0x7F, 0x80 or 0xFF), where counts and lengths
    /// live.
    Extreme(usize, u8),
}

impl Mutation {
    /// Applies the mutation to `base`.
    pub fn apply(&self, base: &[u8]) -> Vec<u8> {
        let mut out = base.to_vec();
        let at = |position: usize| position.checked_rem(base.len()).unwrap_or(0);
        match self {
            Mutation::Truncate(n) => out.truncate(at(*n)),
            Mutation::FlipBits(flips) => {
                for (position, bit) in flips {
                    if !out.is_empty() {
                        let i = at(*position);
                        out[i] ^= 1 << (bit % 8);
                    }
                }
            }
            Mutation::Overwrite(position, bytes) => {
                let start = at(*position);
                for (offset, byte) in bytes.iter().enumerate() {
                    if let Some(slot) = out.get_mut(start + offset) {
                        *slot = *byte;
                    }
                }
            }
            Mutation::Insert(position, bytes) => {
                let start = at(*position);
                out.splice(start..start, bytes.iter().copied());
            }
            Mutation::Replace(bytes) => out = bytes.clone(),
            Mutation::Extreme(position, value) => {
                if !out.is_empty() {
                    let i = at(*position);
                    out[i] = [0x00, 0x7F, 0x80, 0xFF][usize::from(value % 4)];
                }
            }
        }
        out
    }
}

/// Mutations of a file: truncations, bit flips, overwrites, insertions, extreme bytes and
/// random replacements, one to three at a time.
pub fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    let one = prop_oneof![
        3 => any::<usize>().prop_map(Mutation::Truncate),
        4 => vec((any::<usize>(), 0u8..8), 1..8).prop_map(Mutation::FlipBits),
        2 => (any::<usize>(), vec(any::<u8>(), 1..16)).prop_map(|(p, b)| Mutation::Overwrite(p, b)),
        1 => (any::<usize>(), vec(any::<u8>(), 1..16)).prop_map(|(p, b)| Mutation::Insert(p, b)),
        1 => vec(any::<u8>(), 0..512).prop_map(Mutation::Replace),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(p, v)| Mutation::Extreme(p, v)),
    ];
    vec(one, 1..4)
}

/// `base` with `mutations` applied in turn.
pub fn mutate(base: &[u8], mutations: &[Mutation]) -> Vec<u8> {
    mutations
        .iter()
        .fold(base.to_vec(), |bytes, mutation| mutation.apply(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_change_files_and_never_panic_on_empty_ones() {
        let base = b"hello, world".to_vec();
        assert_eq!(Mutation::Truncate(5).apply(&base), b"hello");
        assert_eq!(Mutation::FlipBits(vec![(0, 5)]).apply(&base)[0], b'H');
        assert_eq!(
            Mutation::Insert(7, b"big ".to_vec()).apply(&base),
            b"hello, big world"
        );
        assert_eq!(Mutation::Extreme(1, 3).apply(&base)[1], 0xFF);
        for mutation in [
            Mutation::Truncate(3),
            Mutation::FlipBits(vec![(9, 1)]),
            Mutation::Overwrite(4, vec![1]),
            Mutation::Insert(2, vec![1]),
            Mutation::Extreme(0, 0),
        ] {
            let _ = mutation.apply(&[]);
        }
    }

    #[test]
    fn runs_are_reproducible_and_report_their_inputs() {
        let collect = || {
            let seen = std::cell::RefCell::new(Vec::new());
            let report = fuzz("test", 16, any::<u32>(), |value| {
                seen.borrow_mut().push(value);
                Ok(())
            });
            (report.inputs, seen.into_inner())
        };
        let (inputs, first) = collect();
        let (_, second) = collect();
        assert_eq!(inputs, 16);
        assert_eq!(first, second);
    }

    #[test]
    #[should_panic(expected = "fuzz failing, seed 0")]
    fn a_failure_names_the_target_and_seed() {
        fuzz("failing", 64, 0u32..100, |value| {
            prop_assert!(value < 50);
            Ok(())
        });
    }
}
