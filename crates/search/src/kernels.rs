//! Vector kernels (dot, squared L2, L1, L-infinity) with run-time CPU dispatch.
//!
//! Each kernel keeps 64 independent accumulator lanes, merged pairwise at the end: a portable
//! body and an AVX2 version (picked at run time) that perform the same float operations in the
//! same order, so results are identical on every CPU.

const LANES: usize = 64;

macro_rules! dispatched {
    ($(#[$doc:meta])* $name:ident, $body:ident, $avx2:ident) => {
        $(#[$doc])*
        #[inline]
        pub fn $name(a: &[f32], b: &[f32]) -> f32 {
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { avx2::$avx2(a, b) };
                }
            }
            $body(a, b)
        }
    };
}

/// AVX2 versions of the kernels: the same 64 lanes (8 registers of 8), the same operations
/// (no fused multiply-add) and the same final merge as the portable bodies, so both paths
/// give identical results.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{merge_lanes, LANES};

    macro_rules! lanes_loop {
        ($a:ident, $b:ident, $init:expr, |$acc:ident, $x:ident, $y:ident| $vstep:expr, |$s:ident, $u:ident, $v:ident| $sstep:expr, $merge:expr) => {{
            let n = $a.len().min($b.len());
            let (a, b) = (&$a[..n], &$b[..n]);
            let whole = n / LANES * LANES;
            let mut regs = [_mm256_set1_ps($init); 8];
            let mut i = 0;
            while i < whole {
                for (r, reg) in regs.iter_mut().enumerate() {
                    // SAFETY: i + 8r + 8 <= whole <= len of both slices.
                    let $x = _mm256_loadu_ps(a.as_ptr().add(i + 8 * r));
                    let $y = _mm256_loadu_ps(b.as_ptr().add(i + 8 * r));
                    let $acc = *reg;
                    *reg = $vstep;
                }
                i += LANES;
            }
            let mut acc = [0f32; LANES];
            for (r, reg) in regs.iter().enumerate() {
                _mm256_storeu_ps(acc.as_mut_ptr().add(8 * r), *reg);
            }
            for (k, (u, v)) in a[whole..].iter().zip(&b[whole..]).enumerate() {
                let ($s, $u, $v) = (acc[k], *u, *v);
                acc[k] = $sstep;
            }
            merge_lanes(&mut acc, $merge)
        }};
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        lanes_loop!(
            a,
            b,
            0.0,
            |acc, x, y| _mm256_add_ps(acc, _mm256_mul_ps(x, y)),
            |s, x, y| s + x * y,
            |p, q| p + q
        )
    }

    /// `dot` of an f32 vector with an f16 row, converting 8 values at a time (exact).
    #[target_feature(enable = "avx2,f16c")]
    pub unsafe fn dot_f16(a: &[f32], b: &[half::f16]) -> f32 {
        let n = a.len().min(b.len());
        let (a, b) = (&a[..n], &b[..n]);
        let whole = n / LANES * LANES;
        let mut regs = [_mm256_setzero_ps(); 8];
        let mut i = 0;
        while i < whole {
            for (r, reg) in regs.iter_mut().enumerate() {
                // SAFETY: i + 8r + 8 <= whole <= len of both slices; f16 is a transparent u16.
                let x = _mm256_loadu_ps(a.as_ptr().add(i + 8 * r));
                let y =
                    _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(i + 8 * r) as *const __m128i));
                *reg = _mm256_add_ps(*reg, _mm256_mul_ps(x, y));
            }
            i += LANES;
        }
        let mut acc = [0f32; LANES];
        for (r, reg) in regs.iter().enumerate() {
            _mm256_storeu_ps(acc.as_mut_ptr().add(8 * r), *reg);
        }
        for (k, (x, y)) in a[whole..].iter().zip(&b[whole..]).enumerate() {
            acc[k] += x * y.to_f32();
        }
        merge_lanes(&mut acc, |p, q| p + q)
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn sq_l2(a: &[f32], b: &[f32]) -> f32 {
        lanes_loop!(
            a,
            b,
            0.0,
            |acc, x, y| {
                let d = _mm256_sub_ps(x, y);
                _mm256_add_ps(acc, _mm256_mul_ps(d, d))
            },
            |s, x, y| {
                let d = x - y;
                s + d * d
            },
            |p, q| p + q
        )
    }

    #[target_feature(enable = "avx2")]
    pub unsafe fn l1(a: &[f32], b: &[f32]) -> f32 {
        let sign = _mm256_set1_ps(-0.0);
        lanes_loop!(
            a,
            b,
            0.0,
            |acc, x, y| _mm256_add_ps(acc, _mm256_andnot_ps(sign, _mm256_sub_ps(x, y))),
            |s, x, y| s + (x - y).abs(),
            |p, q| p + q
        )
    }

    #[target_feature(enable = "avx2")]
    #[allow(clippy::eq_op)] // `d - d` is the NaN detector, as in the portable body
    pub unsafe fn linf(a: &[f32], b: &[f32]) -> f32 {
        let sign = _mm256_set1_ps(-0.0);
        // `_mm256_max_ps(d, m)` returns m unless d > m, exactly like the portable `if d > m`.
        let max = lanes_loop!(
            a,
            b,
            0.0,
            |acc, x, y| _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_sub_ps(x, y)), acc),
            |m, x, y| {
                let d = (x - y).abs();
                if d > m {
                    d
                } else {
                    m
                }
            },
            |p, q| if q > p { q } else { p }
        );
        let poison = lanes_loop!(
            a,
            b,
            0.0,
            |acc, x, y| {
                let d = _mm256_sub_ps(x, y);
                _mm256_add_ps(acc, _mm256_sub_ps(d, d))
            },
            |s, x, y| {
                let d = x - y;
                s + (d - d)
            },
            |p, q| p + q
        );
        max + poison
    }
}

/// Inner product of an f32 vector with an f16 row; equal to converting the row and calling
/// [`dot`], without the conversion pass.
#[inline]
pub fn dot_f16(a: &[f32], b: &[half::f16], scratch: &mut Vec<f32>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2")
            && std::arch::is_x86_feature_detected!("f16c")
        {
            // SAFETY: the CPU supports AVX2 and F16C (checked just above).
            return unsafe { avx2::dot_f16(a, b) };
        }
    }
    use half::slice::HalfFloatSliceExt;
    scratch.resize(b.len(), 0.0);
    b.convert_to_f32_slice(scratch);
    dot_body(a, scratch)
}

/// Pairwise merge of the lanes, in a fixed order.
#[inline(always)]
fn merge_lanes(acc: &mut [f32; LANES], merge: impl Fn(f32, f32) -> f32) -> f32 {
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
    merge_lanes(&mut acc, merge)
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
    dot_body,
    dot
);
dispatched!(
    /// Squared euclidean distance over the common length.
    sq_l2,
    sq_l2_body,
    sq_l2
);
dispatched!(
    /// Manhattan (city-block) distance over the common length.
    l1,
    l1_body,
    l1
);
dispatched!(
    /// Chebyshev distance over the common length; NaN if either vector holds a NaN.
    linf,
    linf_body,
    linf
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
    fn f16_dot_equals_converted_dot() {
        for n in [0, 5, 64, 100, 1280] {
            let a: Vec<f32> = data(n, 2).iter().map(|v| v * 0.37).collect();
            let b: Vec<half::f16> = data(n, 9)
                .iter()
                .map(|v| half::f16::from_f32(v * 0.11))
                .collect();
            let converted: Vec<f32> = b.iter().map(|v| v.to_f32()).collect();
            assert_eq!(
                dot_f16(&a, &b, &mut Vec::new()),
                dot(&a, &converted),
                "n={n}"
            );
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
