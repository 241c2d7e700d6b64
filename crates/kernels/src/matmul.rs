//! Matrix products `act(A·W + bias [+ residual])` against weights packed once at load time.
//!
//! The weights of every 1×1 and im2col convolution are packed into column panels of
//! [`NR`] values, so a panel's rows are contiguous and a micro-kernel streams them without
//! repacking on each call. On CPUs with AVX-512 an own 12×32 micro-kernel keeps 24 vector
//! accumulators in registers, reads the activations in place (no copy of A), and applies
//! bias, residual and activation to the accumulators before the single store of the output.
//! Elsewhere the `gemm` crate multiplies each panel and a second pass applies the epilogue.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::activation::Activation;
use crate::buffer::AlignedBuf;
use crate::error::{KernelError, Result};

/// Columns per packed panel (two AVX-512 vectors).
pub(crate) const NR: usize = 32;
/// Rows per micro-kernel call: 12 rows × 2 vectors = 24 of the 32 vector registers.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const MR: usize = 12;
/// Depth of one K slice: 256 rows of a panel are 32 KB, which stays in a 48 KB L1.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const KC: usize = 256;

/// `[k, n]` weights (row-major: input channel, output channel) packed for the GEMM kernels.
///
/// ```
/// use wtb_kernels::kernels::PackedWeights;
///
/// let w: Vec<f32> = (0..3 * 40).map(|i| i as f32).collect(); // k = 3, n = 40
/// let packed = PackedWeights::new(&w, 3, 40)?;
/// assert_eq!((packed.k(), packed.n()), (3, 40));
/// # Ok::<(), wtb_kernels::KernelError>(())
/// ```
#[derive(Clone, Debug)]
pub struct PackedWeights {
    k: usize,
    n: usize,
    /// Panel `p` holds `k` rows of [`NR`] values (columns `p·NR..`), zero padded past `n`.
    panels: AlignedBuf,
}

impl PackedWeights {
    /// Packs row-major `[k, n]` weights; an error if `weights` does not hold `k·n` values.
    pub fn new(weights: &[f32], k: usize, n: usize) -> Result<Self> {
        if weights.len() != k * n {
            return Err(KernelError::BufferSize {
                kernel: "PackedWeights::new",
                buffer: "weights",
                expected: k * n,
                got: weights.len(),
            });
        }
        let panel_count = n.div_ceil(NR);
        let mut panels = AlignedBuf::zeroed(panel_count * k * NR);
        for (p, panel) in panels.chunks_exact_mut((k * NR).max(1)).enumerate() {
            let c0 = p * NR;
            let width = NR.min(n - c0);
            for (row, dst) in panel.chunks_exact_mut(NR).enumerate() {
                dst[..width].copy_from_slice(&weights[row * n + c0..row * n + c0 + width]);
            }
        }
        Ok(Self { k, n, panels })
    }

    /// Rows (input features).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns (output features).
    pub fn n(&self) -> usize {
        self.n
    }

    fn panel(&self, p: usize) -> &[f32] {
        &self.panels[p * self.k * NR..(p + 1) * self.k * NR]
    }
}

/// One block of the output: rows `r0..r1`, columns `c0..c1` (`c0` a multiple of [`NR`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Block {
    pub r0: usize,
    pub r1: usize,
    pub c0: usize,
    pub c1: usize,
}

/// `out[r, c] = act(Σ_k a[r, k]·w[k, c] + bias[c] (+ residual[r, c]))` for the block.
///
/// # Safety
/// `a` points at the block's first row, `lda` values per row, `w.k()` readable values in
/// each of its `r1 − r0` rows; `out` points at element (0, 0) of a row-major output with
/// `ldc` values per row, valid for the block and written by no one else meanwhile.
/// `residual` is null or laid out like `out` (it may be `out` itself).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_block(
    block: Block,
    a: *const f32,
    lda: usize,
    w: &PackedWeights,
    bias: &[f32],
    act: Activation,
    residual: *const f32,
    out: *mut f32,
    ldc: usize,
) {
    debug_assert_eq!(block.c0 % NR, 0);
    debug_assert!(block.c1 <= w.n && bias.len() == w.n);
    #[cfg(target_arch = "x86_64")]
    if use_avx512() {
        avx512::block(block, a, lda, w, bias, act, residual, out, ldc);
        return;
    }
    portable_block(block, a, lda, w, bias, act, residual, out, ldc);
}

/// Set by [`force_portable_gemm`]: benches compare both paths in one process.
static FORCE_PORTABLE: AtomicBool = AtomicBool::new(false);

/// Runs every GEMM on the portable (`gemm` crate) path while `on`, even where AVX-512 is
/// present. For A/B benchmarks and tests of the fallback; results agree within rounding.
#[doc(hidden)]
pub fn force_portable_gemm(on: bool) {
    FORCE_PORTABLE.store(on, Ordering::Relaxed);
}

#[cfg(target_arch = "x86_64")]
fn use_avx512() -> bool {
    use std::sync::OnceLock;
    static AVX512: OnceLock<bool> = OnceLock::new();
    !FORCE_PORTABLE.load(Ordering::Relaxed)
        && *AVX512.get_or_init(|| {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("fma")
        })
}

/// The `gemm` crate per panel, then bias/residual/activation in a second pass.
///
/// # Safety
/// As [`gemm_block`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn portable_block(
    block: Block,
    a: *const f32,
    lda: usize,
    w: &PackedWeights,
    bias: &[f32],
    act: Activation,
    residual: *const f32,
    out: *mut f32,
    ldc: usize,
) {
    let rows = block.r1 - block.r0;
    // A residual already in `out` is accumulated by the GEMM; another is added below.
    let in_place = std::ptr::eq(residual, out);
    let separate = !residual.is_null() && !in_place;
    for c0 in (block.c0..block.c1).step_by(NR) {
        let cols = NR.min(block.c1 - c0);
        let dst = out.add(block.r0 * ldc + c0);
        gemm::gemm(
            rows,
            cols,
            w.k,
            dst,
            1,
            ldc as isize,
            in_place,
            a,
            1,
            lda as isize,
            w.panel(c0 / NR).as_ptr(),
            1,
            NR as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
        let bias = &bias[c0..c0 + cols];
        for r in 0..rows {
            let row = std::slice::from_raw_parts_mut(dst.add(r * ldc), cols);
            if separate {
                let at = (block.r0 + r) * ldc + c0;
                let res = std::slice::from_raw_parts(residual.add(at), cols);
                for ((v, b), x) in row.iter_mut().zip(bias).zip(res) {
                    *v = activate(*v + b + x, act);
                }
            } else {
                for (v, b) in row.iter_mut().zip(bias) {
                    *v = activate(*v + b, act);
                }
            }
        }
    }
}

#[inline(always)]
fn activate(v: f32, act: Activation) -> f32 {
    match act {
        Activation::Identity => v,
        Activation::Relu => v.max(0.0),
        Activation::Relu6 => v.clamp(0.0, 6.0),
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Activation, Block, PackedWeights, KC, MR, NR};

    /// Lanes of vector `v` (0 or 1) that hold one of the `cols` valid columns.
    #[inline(always)]
    fn lane_mask(cols: usize, v: usize) -> __mmask16 {
        let lanes = cols.saturating_sub(v * 16).min(16);
        ((1u32 << lanes) - 1) as __mmask16
    }

    /// # Safety
    /// AVX-512F/VL and FMA present; pointers as [`super::gemm_block`].
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    pub(super) unsafe fn block(
        block: Block,
        a: *const f32,
        lda: usize,
        w: &PackedWeights,
        bias: &[f32],
        act: Activation,
        residual: *const f32,
        out: *mut f32,
        ldc: usize,
    ) {
        // K in KC slices, panel outermost within a slice: one panel's slice (32 KB) stays in
        // L1 while every row block of the task streams past; partial sums of the earlier
        // slices go through `out`. A is read in place: packing it into a contiguous stream
        // measured slower at every MobileNetV2 and ResNet50 shape (and equal at 1024³).
        for k0 in (0..w.k.max(1)).step_by(KC) {
            let k1 = (k0 + KC).min(w.k);
            for c0 in (block.c0..block.c1).step_by(NR) {
                let cols = NR.min(block.c1 - c0);
                let panel = w.panel(c0 / NR).as_ptr();
                // The weight slice the block needs next (the next panel, or the first panel
                // of the next K slice): its first tile prefetches it.
                let next = if c0 + NR < block.c1 {
                    Some((c0 + NR, k0, k1))
                } else if k1 < w.k {
                    Some((block.c0, k1, (k1 + KC).min(w.k)))
                } else {
                    None
                };
                let prefetch = match next {
                    Some((nc, nk0, nk1)) => (w.panel(nc / NR).as_ptr().add(nk0 * NR), nk1 - nk0),
                    _ => (std::ptr::null(), 0),
                };
                let mut r = block.r0;
                while r < block.r1 {
                    let m = MR.min(block.r1 - r);
                    let tile = Tile {
                        k: k1 - k0,
                        a: a.add((r - block.r0) * lda + k0),
                        lda,
                        b: panel.add(k0 * NR),
                        bias: bias.as_ptr().add(c0),
                        cols,
                        act,
                        res: if residual.is_null() {
                            residual
                        } else {
                            residual.add(r * ldc + c0)
                        },
                        c: out.add(r * ldc + c0),
                        ldc,
                        first: k0 == 0,
                        last: k1 >= w.k,
                        prefetch: if r == block.r0 {
                            prefetch.0
                        } else {
                            std::ptr::null()
                        },
                        prefetch_rows: prefetch.1,
                    };
                    macro_rules! run {
                        ($($m:literal)*) => {
                            match (m, cols > 16, !tile.prefetch.is_null()) {
                                $(($m, true, false) => micro::<$m, 2, false>(&tile),
                                  ($m, false, false) => micro::<$m, 1, false>(&tile),
                                  ($m, true, true) => micro::<$m, 2, true>(&tile),
                                  ($m, false, true) => micro::<$m, 1, true>(&tile),)*
                                _ => unreachable!("a block has 1..=MR rows"),
                            }
                        };
                    }
                    run!(1 2 3 4 5 6 7 8 9 10 11 12);
                    r += m;
                }
            }
        }
    }

    /// One micro-kernel call: up to MR rows × one panel.
    struct Tile {
        k: usize,
        a: *const f32,
        /// Distance between rows of A.
        lda: usize,
        b: *const f32,
        bias: *const f32,
        cols: usize,
        act: Activation,
        /// Null, or the residual laid out like `c`.
        res: *const f32,
        c: *mut f32,
        ldc: usize,
        /// The first K slice: start from zero, not from the partial sums in `c`.
        first: bool,
        /// The last K slice: apply bias, residual and activation.
        last: bool,
        /// Null, or the start of the panel slice needed next (`prefetch_rows` rows of
        /// [`NR`] values), fetched into cache while this tile computes.
        prefetch: *const f32,
        prefetch_rows: usize,
    }

    /// `M` rows × `NV` vectors of 16 columns, accumulated in registers over all of `k`,
    /// then bias, residual and activation before one masked store per vector.
    #[inline]
    #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
    unsafe fn micro<const M: usize, const NV: usize, const PF: bool>(t: &Tile) {
        let mut masks = [0 as __mmask16; NV];
        for (v, mask) in masks.iter_mut().enumerate() {
            *mask = lane_mask(t.cols, v);
        }
        // Start from the partial sums of the earlier K slices, or (first slice) from the
        // residual, which may live in `c` itself and is read before anything is written.
        let mut acc = [[_mm512_setzero_ps(); NV]; M];
        let start = if t.first { t.res } else { t.c.cast_const() };
        if !start.is_null() {
            for (r, acc) in acc.iter_mut().enumerate() {
                for v in 0..NV {
                    acc[v] = _mm512_maskz_loadu_ps(masks[v], start.add(r * t.ldc + v * 16));
                }
            }
        }
        let mut b = t.b;
        let mut a = t.a;
        // Two cache lines (one row of NR values) of the next slice per step: a weight slice
        // read for the first time comes from memory, where the hardware prefetcher,
        // restarting at each 32 KB slice, falls behind.
        let mut pf = t.prefetch;
        let in_loop = if PF { t.prefetch_rows.min(t.k) } else { 0 };
        for step in 0..t.k {
            if PF && step < in_loop {
                _mm_prefetch::<_MM_HINT_T0>(pf.cast());
                _mm_prefetch::<_MM_HINT_T0>(pf.add(16).cast());
                pf = pf.add(NR);
            }
            let mut bv = [_mm512_setzero_ps(); NV];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = _mm512_loadu_ps(b.add(v * 16));
            }
            for (r, acc) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*a.add(r * t.lda));
                for v in 0..NV {
                    acc[v] = _mm512_fmadd_ps(av, bv[v], acc[v]);
                }
            }
            a = a.add(1);
            b = b.add(NR);
        }
        if PF {
            for _ in in_loop..t.prefetch_rows {
                _mm_prefetch::<_MM_HINT_T0>(pf.cast());
                _mm_prefetch::<_MM_HINT_T0>(pf.add(16).cast());
                pf = pf.add(NR);
            }
        }
        if !t.last {
            for (r, acc) in acc.iter().enumerate() {
                for v in 0..NV {
                    _mm512_mask_storeu_ps(t.c.add(r * t.ldc + v * 16), masks[v], acc[v]);
                }
            }
            return;
        }
        let mut bias = [_mm512_setzero_ps(); NV];
        for v in 0..NV {
            bias[v] = _mm512_maskz_loadu_ps(masks[v], t.bias.add(v * 16));
        }
        let zero = _mm512_setzero_ps();
        let six = _mm512_set1_ps(6.0);
        for (r, acc) in acc.iter().enumerate() {
            for v in 0..NV {
                let dst = t.c.add(r * t.ldc + v * 16);
                let mut x = _mm512_add_ps(acc[v], bias[v]);
                x = match t.act {
                    Activation::Identity => x,
                    Activation::Relu => _mm512_max_ps(x, zero),
                    Activation::Relu6 => _mm512_min_ps(_mm512_max_ps(x, zero), six),
                };
                _mm512_mask_storeu_ps(dst, masks[v], x);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `len` pseudo-random values in [-1, 1) from `seed` (a 64-bit LCG).
    pub(crate) fn lcg(seed: u64, len: usize) -> Vec<f32> {
        let mut s = seed;
        (0..len)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / 16777216.0) * 2.0 - 1.0
            })
            .collect()
    }

    fn naive(
        a: &[f32],
        w: &[f32],
        bias: &[f32],
        res: &[f32],
        k: usize,
        act: Activation,
    ) -> Vec<f32> {
        let n = bias.len();
        let rows = a.len() / k;
        let mut out = vec![0.0; rows * n];
        for r in 0..rows {
            for c in 0..n {
                let mut s = 0f64;
                for p in 0..k {
                    s += a[r * k + p] as f64 * w[p * n + c] as f64;
                }
                out[r * n + c] = activate(s as f32 + bias[c] + res[r * n + c], act);
            }
        }
        out
    }

    /// Every row count 1..=MR+1 and column counts that end mid-vector, on both paths.
    #[test]
    fn blocks_match_a_naive_product_on_both_paths() {
        for (rows, k, n) in [
            (30, 600, 72),
            (20, 16, 100),
            (1, 5, 8),
            (13, 27, 32),
            (25, 16, 24),
            (7, 64, 70),
            (12, 3, 17),
        ] {
            let a = lcg(rows as u64, rows * k);
            let w = lcg(k as u64 + 99, k * n);
            let bias = lcg(n as u64 + 7, n);
            let res = lcg(3, rows * n);
            let packed = PackedWeights::new(&w, k, n).unwrap();
            for (act, accumulate) in [
                (Activation::Relu6, false),
                (Activation::Identity, true),
                (Activation::Relu, true),
            ] {
                let zeros = vec![0.0; rows * n];
                let want = naive(
                    &a,
                    &w,
                    &bias,
                    if accumulate { &res } else { &zeros },
                    k,
                    act,
                );
                for (portable, in_place) in
                    [(false, false), (false, true), (true, false), (true, true)]
                {
                    let mut out = if accumulate && in_place {
                        res.clone()
                    } else {
                        vec![f32::NAN; rows * n]
                    };
                    let residual = match (accumulate, in_place) {
                        (false, _) => std::ptr::null(),
                        (true, true) => out.as_ptr(),
                        (true, false) => res.as_ptr(),
                    };
                    let block = Block {
                        r0: 0,
                        r1: rows,
                        c0: 0,
                        c1: n,
                    };
                    let run = if portable { portable_block } else { gemm_block };
                    // SAFETY: `a` holds rows × k values, `out` and `res` rows × n.
                    unsafe {
                        run(
                            block,
                            a.as_ptr(),
                            k,
                            &packed,
                            &bias,
                            act,
                            residual,
                            out.as_mut_ptr(),
                            n,
                        )
                    };
                    for (i, (g, e)) in out.iter().zip(&want).enumerate() {
                        assert!(
                            (g - e).abs() <= 1e-4 * (1.0 + e.abs()),
                            "rows {rows} k {k} n {n} {act:?} acc {accumulate} in place {in_place} portable {portable}: [{i}] {g} vs {e}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn packing_refuses_a_wrong_length() {
        assert!(PackedWeights::new(&[0.0; 5], 2, 3).is_err());
    }
}
