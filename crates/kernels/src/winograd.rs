//! 3×3 stride-1 convolutions by Winograd's minimal filtering F(4×4, 3×3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! A 4×4 block of outputs needs a 6×6 input tile. Transformed (`Bᵀ·d·B`), the tile's 36
//! points each multiply the matching point of the transformed filter (`G·g·Gᵀ`, done once at
//! load time); over all input channels that is one GEMM per point, `[tiles, cin] ×
//! [cin, cout]`, and the inverse transform (`Aᵀ·m·A`) gives the 16 outputs. 36 products per
//! 16 outputs instead of 144: a quarter of the GEMM work of im2col, for the price of the two
//! transforms and of four times the filter memory. The points 0, ±1, ±2 keep the transforms'
//! rounding within a few f32 ulps of the direct sum.
//!
//! Tiles are processed in chunks, one chunk per task: transform the chunk's tiles, 36 GEMMs
//! over them, inverse transform straight into the output with bias, residual and activation.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::error::Result;
use crate::kernels::{check_len, fmadd, Activation, Nhwc, PackedWeights, SharedOut, Window};
use crate::matmul::{gemm_block, Block};

/// Outputs per tile side.
const M: usize = 4;
/// Input tile side.
const T: usize = M + 2;
/// Points of a transformed tile.
const POINTS: usize = T * T;
/// Channels transformed together (one AVX-512 vector).
const LANES: usize = 16;

/// Input transform `Bᵀ` (points 0, 1, −1, 2, −2, ∞).
const BT: [[f32; T]; T] = [
    [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
    [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
    [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
    [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
    [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
    [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
];

/// Filter transform `G` (applied in f64 at load time).
const G: [[f64; 3]; T] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// Output transform `Aᵀ`.
const AT: [[f32; T]; M] = [
    [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
    [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
    [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
    [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
];

/// Tiles per thread below which im2col is used instead: the 36 GEMMs would then read each
/// (four times larger) transformed filter for too few rows.
const MIN_TILES_PER_THREAD: usize = 24;

/// Transformed-input values (`tiles × cin`) a chunk aims at per point.
const CHUNK_VALUES: usize = 8192;

/// The transformed filters of one 3×3 convolution: one packed `[cin, cout]` matrix per point.
pub(crate) struct WinogradWeights {
    points: Vec<PackedWeights>,
    zero_bias: Vec<f32>,
}

impl WinogradWeights {
    /// From the im2col weight matrix `[(tap·cin + i)·cout + o]` of a 3×3 convolution.
    pub(crate) fn new(im2col: &[f32], cin: usize, cout: usize) -> Result<Self> {
        check_len(
            "WinogradWeights::new",
            "weights",
            9 * cin * cout,
            im2col.len(),
        )?;
        let mut points = vec![vec![0f32; cin * cout]; POINTS];
        for i in 0..cin {
            for o in 0..cout {
                let g = |ky: usize, kx: usize| im2col[((ky * 3 + kx) * cin + i) * cout + o] as f64;
                // G·g (T×3), then (G·g)·Gᵀ (T×T).
                let mut gg = [[0f64; 3]; T];
                for (r, row) in gg.iter_mut().enumerate() {
                    for (c, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|k| G[r][k] * g(k, c)).sum();
                    }
                }
                for r in 0..T {
                    for c in 0..T {
                        let u: f64 = (0..3).map(|k| gg[r][k] * G[c][k]).sum();
                        points[r * T + c][i * cout + o] = u as f32;
                    }
                }
            }
        }
        Ok(Self {
            points: points
                .iter()
                .map(|p| PackedWeights::new(p, cin, cout))
                .collect::<Result<_>>()?,
            zero_bias: vec![0.0; cout],
        })
    }
}

/// Whether F(4×4, 3×3) beats im2col for this input: enough tiles for every thread, and
/// tiles that cover the output without much waste (7×7 maps would compute 64 outputs for 49).
pub(crate) fn worthwhile(input: Nhwc, win: Window) -> bool {
    let (ty, tx) = (win.out_h.div_ceil(M), win.out_w.div_ceil(M));
    let tiles = input.n * ty * tx;
    let covered = (ty * M * tx * M) as f64;
    let wanted = (win.out_h * win.out_w).max(1) as f64;
    win.k == 3
        && win.stride == 1
        && tiles >= MIN_TILES_PER_THREAD * rayon::current_num_threads()
        && covered / wanted <= 1.35
}

thread_local! {
    /// Transformed inputs and GEMM outputs of the current chunk; grow once, then reused.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// A 3×3 stride-1 convolution with fused bias and activation (`accumulate`: `out` holds a
/// residual to add), as [`crate::kernels::dense_conv`] computes it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv(
    input: &[f32],
    dims: Nhwc,
    win: Window,
    weights: &WinogradWeights,
    bias: &[f32],
    act: Activation,
    accumulate: bool,
    out: &mut [f32],
) -> Result<()> {
    const K: &str = "winograd_conv";
    let cout = bias.len();
    check_len(K, "input", dims.len(), input.len())?;
    check_len(K, "weights", cout, weights.zero_bias.len())?;
    check_len(K, "weights", dims.c, weights.points[0].k())?;
    let out_dims = Nhwc {
        n: dims.n,
        h: win.out_h,
        w: win.out_w,
        c: cout,
    };
    check_len(K, "out", out_dims.len(), out.len())?;
    let grid = Grid {
        tiles_y: win.out_h.div_ceil(M),
        tiles_x: win.out_w.div_ceil(M),
        pad_top: win.pad_top,
        pad_left: win.pad_left,
    };
    let total = dims.n * grid.tiles_y * grid.tiles_x;
    if total == 0 || cout == 0 {
        return Ok(());
    }
    let threads = rayon::current_num_threads().max(1);
    let target = (CHUNK_VALUES / dims.c.max(cout).max(1)).clamp(48, 240);
    let chunks = total.div_ceil(target).div_ceil(threads) * threads;
    let per_chunk = total.div_ceil(chunks);
    let shared = SharedOut(out.as_mut_ptr());
    (0..chunks).into_par_iter().for_each(|chunk| {
        let first = chunk * per_chunk;
        let rows = per_chunk.min(total.saturating_sub(first));
        if rows == 0 {
            return;
        }
        SCRATCH.with(|cell| {
            let (v, m) = &mut *cell.borrow_mut();
            let (v_len, m_len) = (POINTS * rows * dims.c, POINTS * rows * cout);
            if v.len() < v_len {
                v.resize(v_len, 0.0);
            }
            if m.len() < m_len {
                m.resize(m_len, 0.0);
            }
            transform_input_dispatch(input, dims, grid, first, rows, &mut v[..v_len]);
            for (p, packed) in weights.points.iter().enumerate() {
                // SAFETY: plane `p` of `v` holds `rows × cin` values, of `m` `rows × cout`.
                unsafe {
                    gemm_block(
                        Block {
                            r0: 0,
                            r1: rows,
                            c0: 0,
                            c1: cout,
                        },
                        v.as_ptr().add(p * rows * dims.c),
                        dims.c,
                        packed,
                        &weights.zero_bias,
                        Activation::Identity,
                        std::ptr::null(),
                        m.as_mut_ptr().add(p * rows * cout),
                        cout,
                    );
                }
            }
            // SAFETY: the chunk's tiles cover output pixels no other chunk writes.
            unsafe {
                transform_output_dispatch(
                    &m[..m_len],
                    out_dims,
                    grid,
                    first,
                    rows,
                    bias,
                    act,
                    accumulate,
                    shared,
                )
            };
        });
    });
    Ok(())
}

/// How the output is cut into tiles.
#[derive(Clone, Copy)]
struct Grid {
    tiles_y: usize,
    tiles_x: usize,
    pad_top: usize,
    pad_left: usize,
}

impl Grid {
    /// Image, tile row and tile column of tile `t`.
    fn locate(self, t: usize) -> (usize, usize, usize) {
        let per_image = self.tiles_y * self.tiles_x;
        let within = t % per_image;
        (t / per_image, within / self.tiles_x, within % self.tiles_x)
    }
}

/// `v[p][r][c]` = point `p` of `Bᵀ·d·B` for tile `first + r`, channel `c`.
#[inline(always)]
fn transform_input<const FMA: bool>(
    input: &[f32],
    dims: Nhwc,
    grid: Grid,
    first: usize,
    rows: usize,
    v: &mut [f32],
) {
    let c = dims.c;
    let plane = rows * c;
    for r in 0..rows {
        let (n, ty, tx) = grid.locate(first + r);
        let y0 = (ty * M) as isize - grid.pad_top as isize;
        let x0 = (tx * M) as isize - grid.pad_left as isize;
        for c0 in (0..c).step_by(LANES) {
            let lanes = LANES.min(c - c0);
            let mut d = [[[0f32; LANES]; T]; T];
            for (i, d_row) in d.iter_mut().enumerate() {
                let iy = y0 + i as isize;
                if iy < 0 || iy >= dims.h as isize {
                    continue;
                }
                for (j, d_px) in d_row.iter_mut().enumerate() {
                    let ix = x0 + j as isize;
                    if ix < 0 || ix >= dims.w as isize {
                        continue;
                    }
                    let at = ((n * dims.h + iy as usize) * dims.w + ix as usize) * c + c0;
                    d_px[..lanes].copy_from_slice(&input[at..at + lanes]);
                }
            }
            // Bᵀ·d, then (Bᵀ·d)·B; zero coefficients are skipped (constants, so the
            // compiler drops the branches).
            let mut bd = [[[0f32; LANES]; T]; T];
            for (i, bd_row) in bd.iter_mut().enumerate() {
                for (k, d_row) in d.iter().enumerate() {
                    let b = BT[i][k];
                    if b == 0.0 {
                        continue;
                    }
                    for (acc, x) in bd_row.iter_mut().zip(d_row) {
                        for l in 0..LANES {
                            acc[l] = fmadd::<FMA>(acc[l], b, x[l]);
                        }
                    }
                }
            }
            for (i, bd_row) in bd.iter().enumerate() {
                for (j, bt_row) in BT.iter().enumerate() {
                    let mut acc = [0f32; LANES];
                    for (k, x) in bd_row.iter().enumerate() {
                        let b = bt_row[k];
                        if b == 0.0 {
                            continue;
                        }
                        for l in 0..LANES {
                            acc[l] = fmadd::<FMA>(acc[l], b, x[l]);
                        }
                    }
                    let at = (i * T + j) * plane + r * c + c0;
                    v[at..at + lanes].copy_from_slice(&acc[..lanes]);
                }
            }
        }
    }
}

/// Output pixels of tiles `first..first + rows` from their GEMM results `m[p][r][o]`:
/// `Aᵀ·m·A`, plus bias (and the residual already in `out`), activation.
///
/// # Safety
/// `out` points at an NHWC output of `out_dims` that no one else writes in these tiles.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn transform_output<const FMA: bool>(
    m: &[f32],
    out_dims: Nhwc,
    grid: Grid,
    first: usize,
    rows: usize,
    bias: &[f32],
    act: Activation,
    accumulate: bool,
    out: SharedOut,
) {
    let cout = out_dims.c;
    let plane = rows * cout;
    for r in 0..rows {
        let (n, ty, tx) = grid.locate(first + r);
        for o0 in (0..cout).step_by(LANES) {
            let lanes = LANES.min(cout - o0);
            let mut bias_lanes = [0f32; LANES];
            bias_lanes[..lanes].copy_from_slice(&bias[o0..o0 + lanes]);
            let mut p = [[[0f32; LANES]; T]; T];
            for (i, p_row) in p.iter_mut().enumerate() {
                for (j, px) in p_row.iter_mut().enumerate() {
                    let at = (i * T + j) * plane + r * cout + o0;
                    px[..lanes].copy_from_slice(&m[at..at + lanes]);
                }
            }
            // Aᵀ·p (M×T), then (Aᵀ·p)·A (M×M).
            let mut ap = [[[0f32; LANES]; T]; M];
            for (i, ap_row) in ap.iter_mut().enumerate() {
                for (k, p_row) in p.iter().enumerate() {
                    let a = AT[i][k];
                    if a == 0.0 {
                        continue;
                    }
                    for (acc, x) in ap_row.iter_mut().zip(p_row) {
                        for l in 0..LANES {
                            acc[l] = fmadd::<FMA>(acc[l], a, x[l]);
                        }
                    }
                }
            }
            for (i, ap_row) in ap.iter().enumerate() {
                let oy = ty * M + i;
                if oy >= out_dims.h {
                    break;
                }
                for (j, at_row) in AT.iter().enumerate() {
                    let ox = tx * M + j;
                    if ox >= out_dims.w {
                        break;
                    }
                    let mut y = [0f32; LANES];
                    for (k, x) in ap_row.iter().enumerate() {
                        let a = at_row[k];
                        if a == 0.0 {
                            continue;
                        }
                        for l in 0..LANES {
                            y[l] = fmadd::<FMA>(y[l], a, x[l]);
                        }
                    }
                    let at = ((n * out_dims.h + oy) * out_dims.w + ox) * cout + o0;
                    let px = std::slice::from_raw_parts_mut(out.ptr().add(at), lanes);
                    for l in 0..LANES {
                        y[l] += bias_lanes[l];
                    }
                    if lanes == LANES {
                        finish(
                            &mut y,
                            px.try_into().unwrap_or_else(|_| unreachable!()),
                            act,
                            accumulate,
                        );
                    } else {
                        let mut tail = [0f32; LANES];
                        tail[..lanes].copy_from_slice(px);
                        finish(&mut y, &mut tail, act, accumulate);
                        px.copy_from_slice(&tail[..lanes]);
                    }
                }
            }
        }
    }
}

/// `px = act(y (+ px))` over one vector of lanes.
#[inline(always)]
fn finish(y: &mut [f32; LANES], px: &mut [f32; LANES], act: Activation, accumulate: bool) {
    if accumulate {
        for l in 0..LANES {
            y[l] += px[l];
        }
    }
    match act {
        Activation::Identity => {}
        Activation::Relu => y.iter_mut().for_each(|v| *v = v.max(0.0)),
        Activation::Relu6 => y.iter_mut().for_each(|v| *v = v.clamp(0.0, 6.0)),
    }
    *px = *y;
}

/// [`transform_input`] at the CPU's best SIMD level.
fn transform_input_dispatch(
    input: &[f32],
    dims: Nhwc,
    grid: Grid,
    first: usize,
    rows: usize,
    v: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd_level() >= 2 {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        unsafe fn v4(i: &[f32], d: Nhwc, g: Grid, f: usize, r: usize, v: &mut [f32]) {
            transform_input::<true>(i, d, g, f, r, v)
        }
        // SAFETY: the CPU has AVX-512F/VL, AVX2 and FMA (checked by simd_level).
        return unsafe { v4(input, dims, grid, first, rows, v) };
    }
    transform_input::<false>(input, dims, grid, first, rows, v)
}

/// [`transform_output`] at the CPU's best SIMD level.
///
/// # Safety
/// As [`transform_output`].
#[allow(clippy::too_many_arguments)]
unsafe fn transform_output_dispatch(
    m: &[f32],
    out_dims: Nhwc,
    grid: Grid,
    first: usize,
    rows: usize,
    bias: &[f32],
    act: Activation,
    accumulate: bool,
    out: SharedOut,
) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd_level() >= 2 {
        #[allow(clippy::too_many_arguments)]
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        unsafe fn v4(
            m: &[f32],
            d: Nhwc,
            g: Grid,
            f: usize,
            r: usize,
            b: &[f32],
            a: Activation,
            acc: bool,
            o: SharedOut,
        ) {
            transform_output::<true>(m, d, g, f, r, b, a, acc, o)
        }
        return v4(m, out_dims, grid, first, rows, bias, act, accumulate, out);
    }
    transform_output::<false>(m, out_dims, grid, first, rows, bias, act, accumulate, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::dense_conv;

    fn lcg(seed: u64, len: usize) -> Vec<f32> {
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

    /// Every tile position (edges, ragged last tiles), with and without residual, against
    /// im2col on the same weights.
    #[test]
    fn matches_im2col_on_ragged_maps_with_residual() {
        for (n, h, w, cin, cout) in [
            (1, 8, 8, 16, 32),
            (2, 7, 9, 20, 40),
            (1, 14, 14, 64, 64),
            (3, 5, 3, 3, 17),
            (1, 1, 1, 8, 8),
        ] {
            let dims = Nhwc { n, h, w, c: cin };
            let win = Window::symmetric(h, w, 3, 1, 1).unwrap();
            let x = lcg(1 + h as u64, dims.len());
            let t = lcg(2 + cin as u64, 9 * cin * cout);
            let bias = lcg(3, cout);
            let im2col = PackedWeights::new(&t, 9 * cin, cout).unwrap();
            let tiles = WinogradWeights::new(&t, cin, cout).unwrap();
            let len = n * h * w * cout;
            for (act, accumulate) in [(Activation::Relu, false), (Activation::Identity, true)] {
                let residual = lcg(4, len);
                let start = if accumulate {
                    residual
                } else {
                    vec![f32::NAN; len]
                };
                let (mut want, mut got) = (start.clone(), start);
                dense_conv(&x, dims, win, &im2col, &bias, act, accumulate, &mut want).unwrap();
                conv(&x, dims, win, &tiles, &bias, act, accumulate, &mut got).unwrap();
                let (mut diff, mut norm) = (0f64, 0f64);
                for (g, e) in got.iter().zip(&want) {
                    diff += ((g - e) as f64).powi(2);
                    norm += (*e as f64).powi(2);
                }
                let rel = (diff / norm).sqrt();
                assert!(
                    rel <= 1e-5,
                    "{n}x{h}x{w}x{cin}->{cout} {act:?} acc {accumulate}: relative L2 {rel:.2e}"
                );
            }
        }
    }

    #[test]
    fn refuses_buffers_of_the_wrong_size() {
        let dims = Nhwc {
            n: 1,
            h: 4,
            w: 4,
            c: 8,
        };
        let win = Window::symmetric(4, 4, 3, 1, 1).unwrap();
        let tiles = WinogradWeights::new(&[0.0; 9 * 8 * 8], 8, 8).unwrap();
        let x = vec![0.0; dims.len()];
        let mut out = vec![0.0; 4 * 4 * 8 - 1];
        let err = conv(
            &x,
            dims,
            win,
            &tiles,
            &[0.0; 8],
            Activation::Relu,
            false,
            &mut out,
        );
        assert!(err.is_err());
        assert!(WinogradWeights::new(&[0.0; 10], 8, 8).is_err());
    }
}
