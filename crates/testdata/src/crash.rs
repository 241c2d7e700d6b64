//! Crash tests: run a command and kill it with SIGKILL at seeded points, as a power cut or the
//! out-of-memory killer would, leaving it no chance to clean up.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `command` and kills it (SIGKILL on Unix) after `delay` if it is still running; true
/// when it was killed, false when it finished first.
pub fn kill_after(command: &mut Command, delay: Duration) -> bool {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the command starts");
    let started = Instant::now();
    while started.elapsed() < delay {
        if child
            .try_wait()
            .expect("the command can be waited for")
            .is_some()
        {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed = child.kill().is_ok();
    let _ = child.wait();
    killed
}

/// `count` kill points in `[5 %, 95 %]` of `total`, from a seeded generator: the same points on
/// every run.
pub fn kill_points(seed: u64, count: usize, total: Duration) -> Vec<Duration> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..count)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let fraction = 0.05 + 0.9 * (state % 10_000) as f64 / 10_000.0;
            total.mul_f64(fraction)
        })
        .collect()
}

/// Calls `run` with seeded kill points in a run of about `estimate` until `wanted` runs were
/// killed mid-way (`run` returns whether its run was killed), trying at most `4 * wanted`
/// points. A run that finishes before its kill point shows the estimate was too long (the
/// machine is less loaded than when it was measured), so later points come earlier. Returns
/// the runs killed and the runs tried.
pub fn kill_repeatedly(
    seed: u64,
    wanted: usize,
    estimate: Duration,
    mut run: impl FnMut(usize, Duration) -> bool,
) -> (usize, usize) {
    let mut scale = 1.0;
    let (mut killed, mut tried) = (0, 0);
    for (i, point) in kill_points(seed, 4 * wanted, estimate)
        .into_iter()
        .enumerate()
    {
        if killed >= wanted {
            break;
        }
        tried += 1;
        if run(i, point.mul_f64(scale)) {
            killed += 1;
        } else {
            scale *= 0.6;
        }
    }
    (killed, tried)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_points_are_seeded_and_inside_the_run() {
        let total = Duration::from_secs(10);
        let points = kill_points(3, 50, total);
        assert_eq!(points, kill_points(3, 50, total));
        assert_ne!(points, kill_points(4, 50, total));
        assert!(points
            .iter()
            .all(|p| *p >= total.mul_f64(0.05) && *p <= total.mul_f64(0.95)));
    }

    #[test]
    fn points_come_earlier_when_runs_finish_first() {
        let mut delays = Vec::new();
        let (killed, tried) = kill_repeatedly(1, 2, Duration::from_secs(10), |_, delay| {
            delays.push(delay);
            // A run that takes 2 s: killed only when the point comes before its end.
            delay < Duration::from_secs(2)
        });
        assert_eq!(killed, 2);
        assert_eq!(tried, delays.len());
        assert!(delays.last().unwrap() < &Duration::from_secs(2));
    }

    #[test]
    fn a_long_command_is_killed_and_a_short_one_is_not() {
        let mut sleep = Command::new("sleep");
        sleep.arg("30");
        let started = Instant::now();
        assert!(kill_after(&mut sleep, Duration::from_millis(50)));
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(!kill_after(
            &mut Command::new("true"),
            Duration::from_secs(5)
        ));
    }
}
