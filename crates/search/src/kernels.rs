//! Vector kernels (dot, squared L2, L1, L-infinity) with run-time CPU dispatch.
//!
//! Each kernel body is written once with explicit independent accumulator lanes, so that the
//! compiler vectorises it without reassociating floats (results are identical on every CPU
//! path), then compiled for AVX-512 and AVX2 and picked at run time.

const LANES: usize = 64;

macro_rules! dispatched {
    ($(#[$doc:meta])* $name:ident, $body:ident) => {
        $(#[$doc])*
        #[inline]
        pub fn $name(a: &[f32], b: &[f32]) -> f32 {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx2,fma")]
                unsafe fn avx512(a: &[f32], b: &[f32]) -> f32 {
                    $body(a, b)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2(a: &[f32], b: &[f32]) -> f32 {
                    $body(a, b)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU supports the enabled features (checked just above).
                    return unsafe { avx512(a, b) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2(a, b) };
                }
            }
            $body(a, b)
        }
    };
}

#[inline(always)]
fn fold_lanes(
    a: &[f32],
    b: &[f32],
    init: f32,
    step: impl Fn(f32, f32, f32) -> f32,
    merge: impl Fn(f32, f32) -> f32,
) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [init; LANES];
    let chunks_a = a.chunks_exact(LANES);
    let chunks_b = b.chunks_exact(LANES);
    let (tail_a, tail_b) = (chunks_a.remainder(), chunks_b.remainder());
    for (x, y) in chunks_a.zip(chunks_b) {
        for i in 0..LANES {
            acc[i] = step(acc[i], x[i], y[i]);
        }
    }
    for (i, (x, y)) in tail_a.iter().zip(tail_b).enumerate() {
        acc[i] = step(acc[i], *x, *y);
    }
    // Pairwise merge keeps the reduction order fixed.
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] = merge(acc[i], acc[i + width]);
        }
    }
    acc[0]
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    fold_lanes(a, b, 0.0, |s, x, y| s + x * y, |p, q| p + q)
}

#[inline(always)]
fn sq_l2_body(a: &[f32], b: &[f32]) -> f32 {
    fold_lanes(
        a,
        b,
        0.0,
        |s, x, y| {
            let d = x - y;
            s + d * d
        },
        |p, q| p + q,
    )
}

#[inline(always)]
fn l1_body(a: &[f32], b: &[f32]) -> f32 {
    fold_lanes(a, b, 0.0, |s, x, y| s + (x - y).abs(), |p, q| p + q)
}

#[inline(always)]
#[allow(clippy::eq_op)] // `d - d` is the NaN detector, see below
fn linf_body(a: &[f32], b: &[f32]) -> f32 {
    // `d - d` is 0 for finite d and NaN otherwise; adding it propagates NaN through the max,
    // which `f32::max` alone would swallow.
    let max = fold_lanes(
        a,
        b,
        0.0,
        |m, x, y| {
            let d = (x - y).abs();
            if d > m {
                d
            } else {
                m
            }
        },
        |p, q| if q > p { q } else { p },
    );
    let poison = fold_lanes(
        a,
        b,
        0.0,
        |s, x, y| {
            let d = x - y;
            s + (d - d)
        },
        |p, q| p + q,
    );
    max + poison
}

dispatched!(
    /// Inner product over the common length of `a` and `b`.
    dot,
    dot_body
);
dispatched!(
    /// Squared euclidean distance over the common length.
    sq_l2,
    sq_l2_body
);
dispatched!(
    /// Manhattan (city-block) distance over the common length.
    l1,
    l1_body
);
dispatched!(
    /// Chebyshev distance over the common length; NaN if either vector holds a NaN.
    linf,
    linf_body
);

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) % 17) as f32 - 8.0)
            .collect()
    }

    #[test]
    fn kernels_match_plain_loops_on_exact_data() {
        for n in [0, 1, 63, 64, 65, 130, 1280] {
            let a = data(n, 1);
            let b = data(n, 7);
            let dot_ref: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            let l2_ref: f32 = a.iter().zip(&b).map(|(x, y)| (x - y) * (x - y)).sum();
            let l1_ref: f32 = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).sum();
            let linf_ref = a
                .iter()
                .zip(&b)
                .map(|(x, y)| (x - y).abs())
                .fold(0.0, f32::max);
            assert_eq!(dot(&a, &b), dot_ref, "n={n}");
            assert_eq!(sq_l2(&a, &b), l2_ref, "n={n}");
            assert_eq!(l1(&a, &b), l1_ref, "n={n}");
            assert_eq!(linf(&a, &b), linf_ref, "n={n}");
        }
    }

    #[test]
    fn chebyshev_propagates_nan() {
        let mut a = data(100, 3);
        let b = data(100, 4);
        a[77] = f32::NAN;
        assert!(linf(&a, &b).is_nan());
        assert!(dot(&a, &b).is_nan());
    }
}
