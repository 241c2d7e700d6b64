//! 3×3 stride-1 convolutions by Winograd's minimal filtering F(m×m, 3×3) (Lavin & Gray,
//! "Fast Algorithms for Convolutional Neural Networks", 2016), with m = 4 or 2.
//!
//! An m×m block of outputs needs an (m+2)×(m+2) input tile. Transformed (`Bᵀ·d·B`), the
//! tile's points each multiply the matching point of the transformed filter (`G·g·Gᵀ`, done
//! once at load time); over all input channels that is one GEMM per point, `[tiles, cin] ×
//! [cin, cout]`, and the inverse transform (`Aᵀ·m·A`) gives the outputs. F(4×4): 36
//! products per 16 outputs instead of 144; F(2×2): 16 per 4 instead of 36. The points 0,
//! ±1, ±2 keep the transforms' rounding within a few f32 ulps of the direct sum.
//!
//! Layers with fewer than 256 input channels (large maps) take F(4×4); deeper layers take
//! F(2×2): their maps (14×14, 7×7 at 224 input) tile without waste at 2, and their
//! transformed filters, 16/9 rather than 36/9 times the direct ones, are read from memory
//! once per image at batch 1.
//!
//! With many tiles, each task takes a chunk of them through all three steps (transform,
//! the GEMMs, inverse transform into the output with bias, residual and activation). With
//! few (one small image), the steps run one after the other on all tiles, each split across
//! the threads, the GEMMs by point: each thread then reads only its share of the filters.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use crate::error::{KernelError, Result};
use crate::kernels::{check_len, fmadd, Activation, Nhwc, PackedWeights, SharedOut, Window};
use crate::matmul::{gemm_block, Block};

/// Channels transformed together (one AVX-512 vector).
const LANES: usize = 16;

/// The transforms of F(M×M, 3×3): `T = M + 2` input rows per tile.
struct Tiling<const M: usize, const T: usize> {
    /// Input transform `Bᵀ`.
    bt: [[f32; T]; T],
    /// Filter transform `G` (applied in f64 at load time).
    g: [[f64; 3]; T],
    /// Output transform `Aᵀ`.
    at: [[f32; T]; M],
}

/// F(4×4, 3×3), points 0, 1, −1, 2, −2, ∞.
const F4: Tiling<4, 6> = Tiling {
    bt: [
        [4.0, 0.0, -5.0, 0.0, 1.0, 0.0],
        [0.0, -4.0, -4.0, 1.0, 1.0, 0.0],
        [0.0, 4.0, -4.0, -1.0, 1.0, 0.0],
        [0.0, -2.0, -1.0, 2.0, 1.0, 0.0],
        [0.0, 2.0, -1.0, -2.0, 1.0, 0.0],
        [0.0, 4.0, 0.0, -5.0, 0.0, 1.0],
    ],
    g: [
        [1.0 / 4.0, 0.0, 0.0],
        [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
        [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
        [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
        [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
        [0.0, 0.0, 1.0],
    ],
    at: [
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.0, 1.0, -1.0, 2.0, -2.0, 0.0],
        [0.0, 1.0, 1.0, 4.0, 4.0, 0.0],
        [0.0, 1.0, -1.0, 8.0, -8.0, 1.0],
    ],
};

/// F(2×2, 3×3), points 0, 1, −1, ∞.
const F2: Tiling<2, 4> = Tiling {
    bt: [
        [1.0, 0.0, -1.0, 0.0],
        [0.0, 1.0, 1.0, 0.0],
        [0.0, -1.0, 1.0, 0.0],
        [0.0, 1.0, 0.0, -1.0],
    ],
    g: [
        [1.0, 0.0, 0.0],
        [0.5, 0.5, 0.5],
        [0.5, -0.5, 0.5],
        [0.0, 0.0, 1.0],
    ],
    at: [[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, -1.0, -1.0]],
};

/// Input channels from which a layer takes F(2×2) (see the module docs).
const F2_FROM_CHANNELS: usize = 256;

/// Tiles per thread from which each task takes a chunk of tiles through every step.
const MIN_TILES_PER_THREAD: usize = 24;

/// Transformed-input values (`tiles × cin`) a chunk aims at per point.
const CHUNK_VALUES: usize = 8192;

/// GEMM flops that cost as much as one byte of filter read from memory (about 150 GFLOP/s
/// against 5 GB/s for a layer's weights at batch 1 on the 2-core reference machine).
const FLOPS_PER_WEIGHT_BYTE: usize = 30;

/// The transformed filters of one 3×3 convolution: one packed `[cin, cout]` matrix per point.
pub(crate) struct WinogradWeights {
    /// Outputs per tile side (4 or 2).
    m: usize,
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
        if cin >= F2_FROM_CHANNELS {
            Self::with(&F2, im2col, cin, cout)
        } else {
            Self::with(&F4, im2col, cin, cout)
        }
    }

    fn with<const M: usize, const T: usize>(
        tiling: &Tiling<M, T>,
        im2col: &[f32],
        cin: usize,
        cout: usize,
    ) -> Result<Self> {
        let mut points = vec![vec![0f32; cin * cout]; T * T];
        for i in 0..cin {
            for o in 0..cout {
                let g = |ky: usize, kx: usize| im2col[((ky * 3 + kx) * cin + i) * cout + o] as f64;
                // G·g (T×3), then (G·g)·Gᵀ (T×T).
                let mut gg = [[0f64; 3]; T];
                for (r, row) in gg.iter_mut().enumerate() {
                    for (c, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|k| tiling.g[r][k] * g(k, c)).sum();
                    }
                }
                for r in 0..T {
                    for c in 0..T {
                        let u: f64 = (0..3).map(|k| gg[r][k] * tiling.g[c][k]).sum();
                        points[r * T + c][i * cout + o] = u as f32;
                    }
                }
            }
        }
        Ok(Self {
            m: M,
            points: points
                .iter()
                .map(|p| PackedWeights::new(p, cin, cout))
                .collect::<Result<_>>()?,
            zero_bias: vec![0.0; cout],
        })
    }
}

/// Whether these weights' tiling beats im2col on this input: tiles that cover the output
/// without much waste, and less GEMM work plus filter reading (the transformed filters are
/// larger) than im2col's, in the units of [`FLOPS_PER_WEIGHT_BYTE`].
pub(crate) fn worthwhile(input: Nhwc, win: Window, weights: &WinogradWeights) -> bool {
    let m = weights.m;
    let (ty, tx) = (win.out_h.div_ceil(m), win.out_w.div_ceil(m));
    let tiles = input.n * ty * tx;
    let outputs = input.n * win.out_h * win.out_w;
    let points = weights.points.len();
    // Per input-output channel pair: 2 flops per product, 4 bytes per filter value.
    let im2col = 2 * 9 * outputs + 4 * 9 * FLOPS_PER_WEIGHT_BYTE;
    let winograd = 2 * points * tiles + 4 * points * FLOPS_PER_WEIGHT_BYTE;
    let covered = (ty * m * tx * m) as f64 / (win.out_h * win.out_w).max(1) as f64;
    win.k == 3 && win.stride == 1 && covered <= 1.35 && winograd < im2col
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
    if win.k != 3 || win.stride != 1 {
        return Err(KernelError::Window {
            kernel: K,
            reason: format!(
                "Winograd runs 3x3 stride-1 windows, not {0}x{0} stride {1}",
                win.k, win.stride
            ),
        });
    }
    win.validate(K, dims)?;
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
    let layer = Layer {
        input,
        dims,
        out_dims,
        grid: Grid {
            tiles_y: win.out_h.div_ceil(weights.m),
            tiles_x: win.out_w.div_ceil(weights.m),
            pad_top: win.pad_top,
            pad_left: win.pad_left,
        },
        weights,
        bias,
        act,
        accumulate,
        out: SharedOut(out.as_mut_ptr()),
    };
    if weights.m == 2 {
        layer.run(&F2);
    } else {
        layer.run(&F4);
    }
    Ok(())
}

/// One convolution call, everything the steps need.
struct Layer<'a> {
    input: &'a [f32],
    dims: Nhwc,
    out_dims: Nhwc,
    grid: Grid,
    weights: &'a WinogradWeights,
    bias: &'a [f32],
    act: Activation,
    accumulate: bool,
    out: SharedOut,
}

/// The transformed tiles of the tiles `base..base + rows`: `rows × c` values per point.
#[derive(Clone, Copy)]
struct Planes {
    at: *mut f32,
    base: usize,
    rows: usize,
    c: usize,
}

// SAFETY: tasks sharing planes write disjoint rows (or read only).
unsafe impl Send for Planes {}
// SAFETY: as above.
unsafe impl Sync for Planes {}

impl Planes {
    /// Row of tile `tile` in point `p`.
    fn row(self, p: usize, tile: usize) -> *mut f32 {
        // SAFETY (for callers): `tile` is in `base..base + rows`, `p` below the point count.
        self.at
            .wrapping_add((p * self.rows + tile - self.base) * self.c)
    }
}

impl Layer<'_> {
    fn run<const M: usize, const T: usize>(&self, tiling: &Tiling<M, T>) {
        let total = self.dims.n * self.grid.tiles_y * self.grid.tiles_x;
        let (cin, cout) = (self.dims.c, self.out_dims.c);
        if total == 0 || cout == 0 {
            return;
        }
        let threads = rayon::current_num_threads().max(1);
        if total < MIN_TILES_PER_THREAD * threads {
            self.run_by_point(tiling, total, threads);
            return;
        }
        let target = (CHUNK_VALUES / cin.max(cout).max(1)).clamp(48, 240);
        let chunks = total.div_ceil(target).div_ceil(threads) * threads;
        let per_chunk = total.div_ceil(chunks);
        (0..chunks).into_par_iter().for_each(|chunk| {
            let first = chunk * per_chunk;
            let rows = per_chunk.min(total.saturating_sub(first));
            if rows == 0 {
                return;
            }
            SCRATCH.with(|cell| {
                let (v, m) = &mut *cell.borrow_mut();
                let (v, m) = (grow(v, T * T * rows * cin), grow(m, T * T * rows * cout));
                let v = Planes {
                    at: v.as_mut_ptr(),
                    base: first,
                    rows,
                    c: cin,
                };
                let m = Planes {
                    at: m.as_mut_ptr(),
                    base: first,
                    rows,
                    c: cout,
                };
                let tiles = first..first + rows;
                // SAFETY: the planes hold these tiles; this task alone uses them, and its
                // tiles cover output pixels no other task writes.
                unsafe {
                    transform(Step::Input, tiling, self, tiles.clone(), v);
                    self.multiply(0..T * T, v, m);
                    transform(Step::Output, tiling, self, tiles, m);
                }
            });
        });
    }

    /// All tiles at once, each step split across the threads (the GEMMs by point).
    fn run_by_point<const M: usize, const T: usize>(
        &self,
        tiling: &Tiling<M, T>,
        total: usize,
        threads: usize,
    ) {
        let (cin, cout) = (self.dims.c, self.out_dims.c);
        // The buffers leave the thread-local for the parallel steps: while this thread waits
        // for them it may run another task that wants its own scratch.
        let (mut v_buffer, mut m_buffer) =
            SCRATCH.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
        {
            let (v, m) = (
                grow(&mut v_buffer, T * T * total * cin),
                grow(&mut m_buffer, T * T * total * cout),
            );
            let v = Planes {
                at: v.as_mut_ptr(),
                base: 0,
                rows: total,
                c: cin,
            };
            let m = Planes {
                at: m.as_mut_ptr(),
                base: 0,
                rows: total,
                c: cout,
            };
            let parts = threads.min(total);
            let part = |i: usize| total * i / parts..total * (i + 1) / parts;
            // SAFETY: each task writes its own tiles' rows of `v`, its own points of `m`,
            // then its own tiles' output pixels; the planes hold every tile.
            (0..parts)
                .into_par_iter()
                .for_each(|i| unsafe { transform(Step::Input, tiling, self, part(i), v) });
            let points = T * T;
            (0..threads.min(points))
                .into_par_iter()
                .for_each(|i| unsafe {
                    let share =
                        points * i / threads.min(points)..points * (i + 1) / threads.min(points);
                    self.multiply(share, v, m)
                });
            (0..parts)
                .into_par_iter()
                .for_each(|i| unsafe { transform(Step::Output, tiling, self, part(i), m) });
        }
        SCRATCH.with(|cell| *cell.borrow_mut() = (v_buffer, m_buffer));
    }

    /// `m[p] = v[p] · U[p]` for the points `points`, over all tiles of the planes.
    ///
    /// # Safety
    /// The planes hold the same tiles, `cin` and `cout` values per row; no one else
    /// touches these points of `m` meanwhile.
    unsafe fn multiply(&self, points: Range<usize>, v: Planes, m: Planes) {
        for p in points {
            gemm_block(
                Block {
                    r0: 0,
                    r1: v.rows,
                    c0: 0,
                    c1: m.c,
                },
                v.row(p, v.base),
                v.c,
                &self.weights.points[p],
                &self.weights.zero_bias,
                Activation::Identity,
                std::ptr::null(),
                m.row(p, m.base),
                m.c,
            );
        }
    }
}

/// The first `len` values of a reused buffer, grown when needed.
fn grow(buffer: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buffer.len() < len {
        buffer.resize(len, 0.0);
    }
    &mut buffer[..len]
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

/// Point `p` of `Bᵀ·d·B` for each tile in `tiles` and channel, into row (tile) of plane `p`.
///
/// # Safety
/// `v` holds the tiles, `cin` values per row; no one else writes these rows meanwhile.
#[inline(always)]
unsafe fn transform_input<const FMA: bool, const M: usize, const T: usize>(
    tiling: &Tiling<M, T>,
    layer: &Layer,
    tiles: Range<usize>,
    v: Planes,
) {
    let (dims, grid) = (layer.dims, layer.grid);
    let c = dims.c;
    for tile in tiles {
        let (n, ty, tx) = grid.locate(tile);
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
                    d_px[..lanes].copy_from_slice(&layer.input[at..at + lanes]);
                }
            }
            // Bᵀ·d, then (Bᵀ·d)·B; zero coefficients are skipped (constants once inlined,
            // so the compiler drops the branches).
            let mut bd = [[[0f32; LANES]; T]; T];
            for (i, bd_row) in bd.iter_mut().enumerate() {
                for (k, d_row) in d.iter().enumerate() {
                    let b = tiling.bt[i][k];
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
                for (j, bt_row) in tiling.bt.iter().enumerate() {
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
                    let row = v.row(i * T + j, tile).add(c0);
                    std::ptr::copy_nonoverlapping(acc.as_ptr(), row, lanes);
                }
            }
        }
    }
}

/// Output pixels of `tiles` from their GEMM results in `m`: `Aᵀ·m·A`, plus bias (and the
/// residual already in the output), activation.
///
/// # Safety
/// `m` holds the tiles, `cout` values per row; the layer's output is written by no one
/// else in these tiles.
#[inline(always)]
unsafe fn transform_output<const FMA: bool, const M: usize, const T: usize>(
    tiling: &Tiling<M, T>,
    layer: &Layer,
    tiles: Range<usize>,
    m: Planes,
) {
    let (out_dims, grid) = (layer.out_dims, layer.grid);
    let cout = out_dims.c;
    for tile in tiles {
        let (n, ty, tx) = grid.locate(tile);
        for o0 in (0..cout).step_by(LANES) {
            let lanes = LANES.min(cout - o0);
            let mut bias_lanes = [0f32; LANES];
            bias_lanes[..lanes].copy_from_slice(&layer.bias[o0..o0 + lanes]);
            let mut p = [[[0f32; LANES]; T]; T];
            for (i, p_row) in p.iter_mut().enumerate() {
                for (j, px) in p_row.iter_mut().enumerate() {
                    let row = m.row(i * T + j, tile).add(o0);
                    std::ptr::copy_nonoverlapping(row, px.as_mut_ptr(), lanes);
                }
            }
            // Aᵀ·p (M×T), then (Aᵀ·p)·A (M×M).
            let mut ap = [[[0f32; LANES]; T]; M];
            for (i, ap_row) in ap.iter_mut().enumerate() {
                for (k, p_row) in p.iter().enumerate() {
                    let a = tiling.at[i][k];
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
                for (j, at_row) in tiling.at.iter().enumerate() {
                    let ox = tx * M + j;
                    if ox >= out_dims.w {
                        break;
                    }
                    let mut y = bias_lanes;
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
                    let px = std::slice::from_raw_parts_mut(layer.out.ptr().add(at), lanes);
                    if let Ok(full) = <&mut [f32; LANES]>::try_from(&mut *px) {
                        finish(&mut y, full, layer.act, layer.accumulate);
                    } else {
                        let mut tail = [0f32; LANES];
                        tail[..lanes].copy_from_slice(px);
                        finish(&mut y, &mut tail, layer.act, layer.accumulate);
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

/// Which transform [`transform`] runs.
#[derive(Clone, Copy)]
enum Step {
    /// [`transform_input`], into the planes.
    Input,
    /// [`transform_output`], from the planes.
    Output,
}

/// `step` over `tiles` at the CPU's best SIMD level.
///
/// # Safety
/// As [`transform_input`] or [`transform_output`].
unsafe fn transform<const M: usize, const T: usize>(
    step: Step,
    tiling: &Tiling<M, T>,
    layer: &Layer,
    tiles: Range<usize>,
    planes: Planes,
) {
    #[inline(always)]
    unsafe fn run<const FMA: bool, const M: usize, const T: usize>(
        step: Step,
        tiling: &Tiling<M, T>,
        layer: &Layer,
        tiles: Range<usize>,
        planes: Planes,
    ) {
        match step {
            Step::Input => transform_input::<FMA, M, T>(tiling, layer, tiles, planes),
            Step::Output => transform_output::<FMA, M, T>(tiling, layer, tiles, planes),
        }
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd_level() >= 2 {
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        unsafe fn v4<const M: usize, const T: usize>(
            step: Step,
            tiling: &Tiling<M, T>,
            layer: &Layer,
            tiles: Range<usize>,
            planes: Planes,
        ) {
            run::<true, M, T>(step, tiling, layer, tiles, planes)
        }
        return v4(step, tiling, layer, tiles, planes);
    }
    run::<false, M, T>(step, tiling, layer, tiles, planes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::dense_conv;
    use crate::matmul::tests::lcg;

    /// Every tile position (edges, ragged last tiles), with and without residual, both
    /// tilings (F(2×2) from 256 input channels), both schedules (few tiles: by point; many:
    /// by chunk), against im2col on the same weights.
    #[test]
    fn matches_im2col_on_ragged_maps_with_residual() {
        for (n, h, w, cin, cout) in [
            (4, 27, 29, 16, 24),
            (2, 28, 27, 256, 16),
            (1, 8, 8, 16, 32),
            (2, 7, 9, 20, 40),
            (1, 14, 14, 64, 64),
            (2, 14, 14, 256, 32),
            (1, 7, 7, 300, 20),
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
    fn refuses_wrong_buffers_and_windows() {
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
        let mut out = vec![0.0; 2 * 2 * 8];
        let strided = Window::symmetric(4, 4, 3, 2, 1).unwrap();
        let err = conv(
            &x,
            dims,
            strided,
            &tiles,
            &[0.0; 8],
            Activation::Relu,
            false,
            &mut out,
        );
        assert!(err.unwrap_err().to_string().contains("stride 2"));
        assert!(WinogradWeights::new(&[0.0; 10], 8, 8).is_err());
    }
}
