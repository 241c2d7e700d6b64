//! The fused NHWC kernels on plain `f32` slices.
//!
//! Activations are NHWC (channels contiguous), so a 1×1 convolution is one matrix product
//! `[N·H·W, Cin] × [Cin, Cout]` and a depthwise convolution vectorises over channels.
//! Every convolution kernel applies bias, activation and (optionally) a residual in the same
//! pass over its output tile, while the tile is still in cache. Work is split over rows
//! (batch × space) and, for short matrices, over output channels, on the current rayon pool.

use std::cell::RefCell;

use rayon::prelude::*;

pub use crate::activation::Activation;
use crate::error::{KernelError, Result};
pub use crate::matmul::{force_portable_gemm, PackedWeights};
use crate::matmul::{gemm_block, Block, NR};

/// Shape of an NHWC activation: batch, height, width, channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Nhwc {
    /// Batch size.
    pub n: usize,
    /// Height.
    pub h: usize,
    /// Width.
    pub w: usize,
    /// Channels.
    pub c: usize,
}

impl Nhwc {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.n * self.h * self.w * self.c
    }

    /// True when the activation holds no value.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A square sliding window: size, stride and the zero padding before the first row and column.
///
/// Padding after the last row/column is implied by the output size: taps that fall outside
/// the input read zero (or are skipped, for max pooling).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window {
    /// Kernel size (k×k).
    pub k: usize,
    /// Stride in both directions.
    pub stride: usize,
    /// Zero rows above the input.
    pub pad_top: usize,
    /// Zero columns left of the input.
    pub pad_left: usize,
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
}

impl Window {
    /// The PyTorch window: symmetric padding `pad`, output `(h + 2·pad − k) / stride + 1`.
    pub fn symmetric(h: usize, w: usize, k: usize, stride: usize, pad: usize) -> Result<Self> {
        let check = |size: usize, what: &str| {
            if stride == 0 || k == 0 || size + 2 * pad < k {
                Err(KernelError::Window {
                    kernel: "window",
                    reason: format!(
                        "{what} {size} with padding {pad} is smaller than kernel {k} (stride {stride})"
                    ),
                })
            } else {
                Ok((size + 2 * pad - k) / stride + 1)
            }
        };
        Ok(Self {
            k,
            stride,
            pad_top: pad,
            pad_left: pad,
            out_h: check(h, "height")?,
            out_w: check(w, "width")?,
        })
    }

    /// TensorFlow "SAME" padding: output `ceil(size / stride)`, the odd padding pixel after.
    pub fn tf_same(h: usize, w: usize, k: usize, stride: usize) -> Result<Self> {
        if stride == 0 || k == 0 || h == 0 || w == 0 {
            return Err(KernelError::Window {
                kernel: "window",
                reason: format!("empty input {h}x{w} or kernel {k} / stride {stride}"),
            });
        }
        let pad_before = |size: usize| {
            let out = size.div_ceil(stride);
            ((out - 1) * stride + k).saturating_sub(size) / 2
        };
        Ok(Self {
            k,
            stride,
            pad_top: pad_before(h),
            pad_left: pad_before(w),
            out_h: h.div_ceil(stride),
            out_w: w.div_ceil(stride),
        })
    }

    fn out_dims(&self, input: Nhwc, c: usize) -> Nhwc {
        Nhwc {
            n: input.n,
            h: self.out_h,
            w: self.out_w,
            c,
        }
    }

    pub(crate) fn validate(&self, kernel: &'static str, input: Nhwc) -> Result<()> {
        let fits = |out: usize, pad: usize, size: usize| {
            // The last window must start inside the input (or its leading padding).
            out == 0 || (out - 1) * self.stride < size + pad
        };
        if self.k == 0 || self.stride == 0 {
            return Err(KernelError::Window {
                kernel,
                reason: format!("kernel {} and stride {} must be >= 1", self.k, self.stride),
            });
        }
        if !fits(self.out_h, self.pad_top, input.h) || !fits(self.out_w, self.pad_left, input.w) {
            return Err(KernelError::Window {
                kernel,
                reason: format!(
                    "output {}x{} does not fit input {}x{} at stride {}",
                    self.out_h, self.out_w, input.h, input.w, self.stride
                ),
            });
        }
        Ok(())
    }
}

pub(crate) fn check_len(
    kernel: &'static str,
    buffer: &'static str,
    expected: usize,
    got: usize,
) -> Result<()> {
    if expected == got {
        Ok(())
    } else {
        Err(KernelError::BufferSize {
            kernel,
            buffer,
            expected,
            got,
        })
    }
}

/// Runs `$body::<true>` compiled for AVX-512 or AVX2+FMA when the CPU has them, else the
/// portable `$body::<false>`. The const parameter says whether `mul_add` is a hardware FMA.
macro_rules! dispatch {
    ($body:ident($($arg:expr),* $(,)?)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            if simd_level() >= 2 {
                // SAFETY: the CPU supports AVX-512F/VL, AVX2 and FMA (checked by simd_level).
                return unsafe { x86::$body::v4($($arg),*) };
            }
            if simd_level() == 1 {
                // SAFETY: the CPU supports AVX2 and FMA (checked by simd_level).
                return unsafe { x86::$body::v3($($arg),*) };
            }
        }
        $body::<false>($($arg),*)
    }};
}

/// 0: portable, 1: AVX2 + FMA, 2: AVX-512.
#[cfg(target_arch = "x86_64")]
pub(crate) fn simd_level() -> u8 {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
        {
            2
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            1
        } else {
            0
        }
    })
}

/// Target-feature copies of the hot loops (one module per body, `v4` = AVX-512, `v3` = AVX2).
#[cfg(target_arch = "x86_64")]
mod x86 {
    macro_rules! versions {
        ($name:ident($($arg:ident : $ty:ty),*)) => {
            pub(super) mod $name {
                #[allow(unused_imports)]
                use super::super::*;
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                pub(in super::super) unsafe fn v4($($arg: $ty),*) {
                    super::super::$name::<true>($($arg),*)
                }
                #[allow(clippy::too_many_arguments)]
                #[target_feature(enable = "avx2,fma")]
                pub(in super::super) unsafe fn v3($($arg: $ty),*) {
                    super::super::$name::<true>($($arg),*)
                }
            }
        };
    }
    versions!(depthwise_row(input: &[f32], base_row: usize, dims: Nhwc, win: Window, weights: &[f32], bias: &[f32], act: Activation, oy: usize, out_row: &mut [f32]));
    versions!(max_pool_row(input: &[f32], dims: Nhwc, win: Window, oy: usize, out_row: &mut [f32]));
}

#[inline(always)]
pub(crate) fn fmadd<const FMA: bool>(acc: f32, a: f32, b: f32) -> f32 {
    if FMA {
        a.mul_add(b, acc)
    } else {
        acc + a * b
    }
}

/// A raw output pointer shared by tasks that write disjoint blocks (or rows).
#[derive(Clone, Copy)]
pub(crate) struct SharedOut(pub(crate) *mut f32);
// SAFETY: every user hands each task a disjoint part of the output (GEMM blocks, bands).
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// A method, so closures capture the whole (Sync) wrapper rather than its raw field.
    pub(crate) fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// Splits an `m × n` output among the rayon threads into equal parts, a multiple of the
/// thread count, so that no thread is left with one part more than the other: by panels of
/// columns when the weights outweigh the activations (`n > m`: each thread reads only its
/// share of the weights), else by rows (each part reads its rows of A once and every panel
/// of the weights), in parts of at most `MAX_ROWS` rows.
fn blocks(m: usize, n: usize) -> Vec<Block> {
    const MAX_ROWS: usize = 384;
    const MIN_ROWS: usize = 8;
    let threads = rayon::current_num_threads().max(1);
    let panels = n.div_ceil(NR);
    let (row_parts, col_parts) = if threads == 1 {
        (m.div_ceil(MAX_ROWS).max(1), 1)
    } else if n > m && panels >= threads {
        // More weights than activations (late layers of one image): each thread reads
        // only its share of the weights, rather than all of them.
        (m.div_ceil(MAX_ROWS).max(1), threads)
    } else if m >= threads * MIN_ROWS {
        (threads * m.div_ceil(threads * MAX_ROWS).max(1), 1)
    } else {
        (1, threads.min(panels).max(1))
    };
    let mut out = Vec::with_capacity(row_parts * col_parts);
    for rp in 0..row_parts {
        let (r0, r1) = (m * rp / row_parts, m * (rp + 1) / row_parts);
        for cp in 0..col_parts {
            let (c0, c1) = (
                panels * cp / col_parts * NR,
                (panels * (cp + 1) / col_parts * NR).min(n),
            );
            if r1 > r0 && c1 > c0 {
                out.push(Block { r0, r1, c0, c1 });
            }
        }
    }
    out
}

thread_local! {
    /// im2col patches of the current task; grows to the largest block once, then is reused.
    static PATCHES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn check_weights(
    kernel: &'static str,
    weights: &PackedWeights,
    k: usize,
    bias: &[f32],
) -> Result<()> {
    if weights.k() != k || weights.n() != bias.len() {
        return Err(KernelError::BufferSize {
            kernel,
            buffer: "weights",
            expected: k * bias.len(),
            got: weights.k() * weights.n(),
        });
    }
    Ok(())
}

/// 1×1 convolution (or fully connected layer) as one GEMM, with fused bias and activation.
///
/// `input` is `[rows, cin]`, `weights` the packed `[cin, cout]` matrix, `bias` `[cout]`,
/// `out` `[rows, cout]`. With `accumulate`, `out` already holds the residual and receives
/// `act(residual + input·weights + bias)`.
#[allow(clippy::too_many_arguments)]
pub fn pointwise_conv(
    input: &[f32],
    rows: usize,
    cin: usize,
    weights: &PackedWeights,
    bias: &[f32],
    act: Activation,
    accumulate: bool,
    out: &mut [f32],
) -> Result<()> {
    const K: &str = "pointwise_conv";
    let cout = bias.len();
    check_len(K, "input", rows * cin, input.len())?;
    check_weights(K, weights, cin, bias)?;
    check_len(K, "out", rows * cout, out.len())?;
    if rows == 0 || cout == 0 {
        return Ok(());
    }
    let shared = SharedOut(out.as_mut_ptr());
    blocks(rows, cout).into_par_iter().for_each(|block| {
        // SAFETY: blocks are disjoint and inside `out`; `input` has `rows × cin` values.
        unsafe {
            gemm_block(
                block,
                input.as_ptr().add(block.r0 * cin),
                cin,
                weights,
                bias,
                act,
                if accumulate {
                    shared.ptr()
                } else {
                    std::ptr::null()
                },
                shared.ptr(),
                cout,
            )
        }
    });
    Ok(())
}

/// Writes the im2col patches of output rows `r0..r1` (patch order: ky, kx, channel).
fn im2col(input: &[f32], dims: Nhwc, win: Window, r0: usize, r1: usize, patches: &mut [f32]) {
    let c = dims.c;
    let kk = win.k * win.k * c;
    for (i, r) in (r0..r1).enumerate() {
        let ox = r % win.out_w;
        let oy = (r / win.out_w) % win.out_h;
        let n = r / (win.out_w * win.out_h);
        let patch = &mut patches[i * kk..(i + 1) * kk];
        for ky in 0..win.k {
            let iy = (oy * win.stride + ky) as isize - win.pad_top as isize;
            let dst_row = &mut patch[ky * win.k * c..(ky + 1) * win.k * c];
            if iy < 0 || iy >= dims.h as isize {
                dst_row.fill(0.0);
                continue;
            }
            let src_row = (n * dims.h + iy as usize) * dims.w * c;
            // NHWC: the k pixels of this window row are contiguous when all are inside.
            let ix0 = (ox * win.stride) as isize - win.pad_left as isize;
            if ix0 >= 0 && ix0 as usize + win.k <= dims.w {
                let at = src_row + ix0 as usize * c;
                dst_row.copy_from_slice(&input[at..at + win.k * c]);
                continue;
            }
            for kx in 0..win.k {
                let ix = (ox * win.stride + kx) as isize - win.pad_left as isize;
                let dst = &mut dst_row[kx * c..(kx + 1) * c];
                if ix < 0 || ix >= dims.w as isize {
                    dst.fill(0.0);
                } else {
                    let at = src_row + ix as usize * c;
                    dst.copy_from_slice(&input[at..at + c]);
                }
            }
        }
    }
}

/// Dense k×k convolution through im2col + GEMM, with fused bias and activation.
///
/// `weights` are the packed `[k·k·cin, cout]` matrix with rows in (ky, kx, cin) order, `out`
/// is NHWC with the window's output size. Patches are built per block in a reused
/// thread-local buffer, so the full im2col matrix never exists. `accumulate` as in
/// [`pointwise_conv`].
#[allow(clippy::too_many_arguments)]
pub fn dense_conv(
    input: &[f32],
    dims: Nhwc,
    win: Window,
    weights: &PackedWeights,
    bias: &[f32],
    act: Activation,
    accumulate: bool,
    out: &mut [f32],
) -> Result<()> {
    const K: &str = "dense_conv";
    let cout = bias.len();
    let kk = win.k * win.k * dims.c;
    win.validate(K, dims)?;
    check_len(K, "input", dims.len(), input.len())?;
    check_weights(K, weights, kk, bias)?;
    let out_dims = win.out_dims(dims, cout);
    check_len(K, "out", out_dims.len(), out.len())?;
    let rows = out_dims.n * out_dims.h * out_dims.w;
    if rows == 0 || cout == 0 {
        return Ok(());
    }
    let shared = SharedOut(out.as_mut_ptr());
    blocks(rows, cout).into_par_iter().for_each(|block| {
        PATCHES.with(|cell| {
            let mut patches = cell.borrow_mut();
            let need = (block.r1 - block.r0) * kk;
            if patches.len() < need {
                patches.resize(need, 0.0);
            }
            im2col(input, dims, win, block.r0, block.r1, &mut patches[..need]);
            // SAFETY: blocks are disjoint and inside `out`; `patches` holds the block's rows.
            unsafe {
                gemm_block(
                    block,
                    patches.as_ptr(),
                    kk,
                    weights,
                    bias,
                    act,
                    if accumulate {
                        shared.ptr()
                    } else {
                        std::ptr::null()
                    },
                    shared.ptr(),
                    cout,
                )
            }
        })
    });
    Ok(())
}

/// Accumulates `CB` channels starting at `c0` of one output pixel over the window's taps.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn depthwise_block<const CB: usize, const FMA: bool>(
    input: &[f32],
    dims: Nhwc,
    win: Window,
    weights: &[f32],
    bias: &[f32],
    act: Activation,
    row0: isize,
    oy: usize,
    ox: usize,
    c0: usize,
    out: &mut [f32],
) {
    let c = dims.c;
    let mut acc = [0f32; CB];
    acc.copy_from_slice(&bias[c0..c0 + CB]);
    for ky in 0..win.k {
        let iy = (oy * win.stride + ky) as isize - win.pad_top as isize;
        if iy < 0 || iy >= dims.h as isize {
            continue;
        }
        let row = (row0 + iy) as usize * dims.w * c;
        for kx in 0..win.k {
            let ix = (ox * win.stride + kx) as isize - win.pad_left as isize;
            if ix < 0 || ix >= dims.w as isize {
                continue;
            }
            let x = &input[row + ix as usize * c + c0..][..CB];
            let w = &weights[(ky * win.k + kx) * c + c0..][..CB];
            for j in 0..CB {
                acc[j] = fmadd::<FMA>(acc[j], x[j], w[j]);
            }
        }
    }
    store_activated(&acc, act, out);
}

/// Output pixels computed together by [`depthwise_strip`]: each weight vector loaded serves
/// this many pixels, which halves the loads per multiply-add of one pixel at a time.
const STRIP: usize = 4;

/// `act(acc)` into `dst`.
#[inline(always)]
fn store_activated<const CB: usize>(acc: &[f32; CB], act: Activation, dst: &mut [f32]) {
    let dst = &mut dst[..CB];
    match act {
        Activation::Identity => dst.copy_from_slice(acc),
        Activation::Relu => dst.iter_mut().zip(acc).for_each(|(d, v)| *d = v.max(0.0)),
        Activation::Relu6 => dst
            .iter_mut()
            .zip(acc)
            .for_each(|(d, v)| *d = v.clamp(0.0, 6.0)),
    }
}

/// Channels `c0..c0 + 16` of a whole output row: [`STRIP`] pixels (else one) at a time where
/// their windows lie inside the row, one at a time with the padding checks at the edges.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn depthwise_strip<const FMA: bool>(
    input: &[f32],
    dims: Nhwc,
    win: Window,
    weights: &[f32],
    bias: &[f32],
    act: Activation,
    row0: isize,
    oy: usize,
    c0: usize,
    out_row: &mut [f32],
) {
    const CB: usize = 16;
    let c = dims.c;
    let (k, stride) = (win.k, win.stride);
    // Rows of the window inside the image (the same for every pixel of this output row).
    let top = (oy * stride) as isize - win.pad_top as isize;
    let ky_first = (-top).max(0) as usize;
    let ky_end = (dims.h as isize - top).clamp(0, k as isize) as usize;
    let mut bias_block = [0f32; CB];
    bias_block.copy_from_slice(&bias[c0..c0 + CB]);
    // Pixel `ox` reads columns `ox·stride − pad_left ..= ox·stride − pad_left + k − 1`.
    let first_inside = win.pad_left.div_ceil(stride);
    let last_inside = (dims.w + win.pad_left).checked_sub(k).map(|v| v / stride);
    let fits = |ox: usize, pixels: usize| {
        ox >= first_inside
            && last_inside.is_some_and(|last| ox + pixels - 1 <= last)
            && ox + pixels <= win.out_w
    };
    let strip = StripRows {
        row0,
        top,
        ky_first,
        ky_end,
        c0,
    };
    let mut ox = 0;
    while ox < win.out_w {
        if fits(ox, STRIP) {
            inside_strip::<STRIP, FMA>(
                input,
                dims,
                win,
                weights,
                &bias_block,
                act,
                strip,
                ox,
                out_row,
            );
            ox += STRIP;
        } else if fits(ox, 1) {
            inside_strip::<1, FMA>(
                input,
                dims,
                win,
                weights,
                &bias_block,
                act,
                strip,
                ox,
                out_row,
            );
            ox += 1;
        } else {
            depthwise_block::<CB, FMA>(
                input,
                dims,
                win,
                weights,
                bias,
                act,
                row0,
                oy,
                ox,
                c0,
                &mut out_row[ox * c + c0..],
            );
            ox += 1;
        }
    }
}

/// The rows of one output row's windows: buffer row offset, first window row in image rows,
/// the window rows inside the image, and the channel block.
#[derive(Clone, Copy)]
struct StripRows {
    row0: isize,
    top: isize,
    ky_first: usize,
    ky_end: usize,
    c0: usize,
}

/// `P` output pixels from `ox` on whose windows lie inside the image columns, channels
/// `c0..c0 + 16`: one weight vector load serves the `P` pixels, and after one bounds check
/// of the extreme reads the loop indexes without checks.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn inside_strip<const P: usize, const FMA: bool>(
    input: &[f32],
    dims: Nhwc,
    win: Window,
    weights: &[f32],
    bias_block: &[f32; 16],
    act: Activation,
    rows: StripRows,
    ox: usize,
    out_row: &mut [f32],
) {
    const CB: usize = 16;
    let StripRows {
        row0,
        top,
        ky_first,
        ky_end,
        c0,
    } = rows;
    let c = dims.c;
    let (k, stride) = (win.k, win.stride);
    let mut acc = [*bias_block; P];
    let first_at = (row0 + top + ky_first as isize) as usize * dims.w * c
        + (ox * stride - win.pad_left) * c
        + c0;
    let last_at = (row0 + top + ky_end as isize - 1) as usize * dims.w * c
        + ((ox + P - 1) * stride + k - 1 - win.pad_left) * c
        + c0
        + CB;
    assert!(
        ky_first < ky_end
            && row0 + top + ky_first as isize >= 0
            && first_at < last_at
            && last_at <= input.len()
            && c0 + CB <= c
            && k * k * c <= weights.len(),
        "depthwise strip outside its input"
    );
    let (x_base, w_base) = (input.as_ptr(), weights.as_ptr());
    for ky in ky_first..ky_end {
        let iy = (top + ky as isize) as usize;
        let row = (row0 + iy as isize) as usize * dims.w * c;
        for kx in 0..k {
            let ix0 = ox * stride + kx - win.pad_left;
            // SAFETY: every index lies between first_at and last_at (checked above): rows
            // ky_first..ky_end, columns of pixels ox..ox + P, channels c0..c0 + CB.
            unsafe {
                let w = w_base.add((ky * k + kx) * c + c0);
                for (p, acc) in acc.iter_mut().enumerate() {
                    let x = x_base.add(row + (ix0 + p * stride) * c + c0);
                    for (j, acc) in acc.iter_mut().enumerate() {
                        *acc = fmadd::<FMA>(*acc, *x.add(j), *w.add(j));
                    }
                }
            }
        }
    }
    for (p, acc) in acc.iter().enumerate() {
        store_activated(acc, act, &mut out_row[(ox + p) * c + c0..]);
    }
}

/// One output row (`oy` of image `n`, packed as `n·out_h + oy`) of a depthwise convolution.
/// `input` holds the rows from `base_row` on (image rows counted across the batch).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn depthwise_row<const FMA: bool>(
    input: &[f32],
    base_row: usize,
    dims: Nhwc,
    win: Window,
    weights: &[f32],
    bias: &[f32],
    act: Activation,
    oy: usize,
    out_row: &mut [f32],
) {
    let c = dims.c;
    let n = oy / win.out_h;
    let oy = oy % win.out_h;
    let row0 = (n * dims.h) as isize - base_row as isize;
    let blocks = c / 16 * 16;
    for c0 in (0..blocks).step_by(16) {
        depthwise_strip::<FMA>(input, dims, win, weights, bias, act, row0, oy, c0, out_row);
    }
    for ox in 0..win.out_w {
        for c0 in blocks..c {
            depthwise_block::<1, FMA>(
                input,
                dims,
                win,
                weights,
                bias,
                act,
                row0,
                oy,
                ox,
                c0,
                &mut out_row[ox * c + c0..],
            );
        }
    }
}

/// Direct depthwise k×k convolution (one filter per channel), with fused bias and activation.
///
/// `weights` are `[k·k, c]` (tap-major, channels contiguous), `out` is NHWC with the
/// window's output size. Vectorised over channels; parallel over output rows.
pub fn depthwise_conv(
    input: &[f32],
    dims: Nhwc,
    win: Window,
    weights: &[f32],
    bias: &[f32],
    act: Activation,
    out: &mut [f32],
) -> Result<()> {
    const K: &str = "depthwise_conv";
    win.validate(K, dims)?;
    check_len(K, "input", dims.len(), input.len())?;
    check_len(K, "weights", win.k * win.k * dims.c, weights.len())?;
    check_len(K, "bias", dims.c, bias.len())?;
    let out_dims = win.out_dims(dims, dims.c);
    check_len(K, "out", out_dims.len(), out.len())?;
    let row_len = win.out_w * dims.c;
    if row_len == 0 {
        return Ok(());
    }
    out.par_chunks_mut(row_len)
        .enumerate()
        .for_each(|(oy, out_row)| {
            depthwise_row_dispatch(input, 0, dims, win, weights, bias, act, oy, out_row)
        });
    Ok(())
}

/// [`depthwise_row`] at the CPU's best SIMD level.
#[allow(clippy::too_many_arguments)]
pub(crate) fn depthwise_row_dispatch(
    input: &[f32],
    base_row: usize,
    dims: Nhwc,
    win: Window,
    weights: &[f32],
    bias: &[f32],
    act: Activation,
    oy: usize,
    out_row: &mut [f32],
) {
    dispatch!(depthwise_row(
        input, base_row, dims, win, weights, bias, act, oy, out_row
    ))
}

#[inline(always)]
fn max_pool_row<const FMA: bool>(
    input: &[f32],
    dims: Nhwc,
    win: Window,
    oy: usize,
    out_row: &mut [f32],
) {
    let c = dims.c;
    let n = oy / win.out_h;
    let oy = oy % win.out_h;
    for ox in 0..win.out_w {
        let px = &mut out_row[ox * c..(ox + 1) * c];
        px.fill(f32::NEG_INFINITY);
        for ky in 0..win.k {
            let iy = (oy * win.stride + ky) as isize - win.pad_top as isize;
            if iy < 0 || iy >= dims.h as isize {
                continue;
            }
            for kx in 0..win.k {
                let ix = (ox * win.stride + kx) as isize - win.pad_left as isize;
                if ix < 0 || ix >= dims.w as isize {
                    continue;
                }
                let at = ((n * dims.h + iy as usize) * dims.w + ix as usize) * c;
                px.iter_mut()
                    .zip(&input[at..at + c])
                    .for_each(|(p, x)| *p = p.max(*x));
            }
        }
    }
}

/// Max pooling over a k×k window; padded taps are skipped (PyTorch semantics).
pub fn max_pool(input: &[f32], dims: Nhwc, win: Window, out: &mut [f32]) -> Result<()> {
    const K: &str = "max_pool";
    win.validate(K, dims)?;
    if win.pad_top >= win.k || win.pad_left >= win.k {
        return Err(KernelError::Window {
            kernel: K,
            reason: format!(
                "padding {} must be smaller than the window {}",
                win.pad_top, win.k
            ),
        });
    }
    check_len(K, "input", dims.len(), input.len())?;
    let out_dims = win.out_dims(dims, dims.c);
    check_len(K, "out", out_dims.len(), out.len())?;
    let row_len = win.out_w * dims.c;
    if row_len == 0 {
        return Ok(());
    }
    out.par_chunks_mut(row_len)
        .enumerate()
        .for_each(|(oy, out_row)| max_pool_row_dispatch(input, dims, win, oy, out_row));
    Ok(())
}

fn max_pool_row_dispatch(input: &[f32], dims: Nhwc, win: Window, oy: usize, out_row: &mut [f32]) {
    dispatch!(max_pool_row(input, dims, win, oy, out_row))
}

/// Global average pooling: `[n, h, w, c]` → `[n, c]`.
pub fn global_avg_pool(input: &[f32], dims: Nhwc, out: &mut [f32]) -> Result<()> {
    const K: &str = "global_avg_pool";
    check_len(K, "input", dims.len(), input.len())?;
    check_len(K, "out", dims.n * dims.c, out.len())?;
    let hw = dims.h * dims.w;
    if dims.c == 0 {
        return Ok(());
    }
    let scale = 1.0 / hw.max(1) as f32;
    out.par_chunks_mut(dims.c).enumerate().for_each(|(n, o)| {
        o.fill(0.0);
        for px in input[n * hw * dims.c..(n + 1) * hw * dims.c].chunks_exact(dims.c) {
            o.iter_mut().zip(px).for_each(|(a, x)| *a += x);
        }
        o.iter_mut().for_each(|a| *a *= scale);
    });
    Ok(())
}

/// Reorders `[n, c, h, w]` into `[n, h, w, c]`.
pub fn nchw_to_nhwc(input: &[f32], dims: Nhwc, out: &mut [f32]) -> Result<()> {
    const K: &str = "nchw_to_nhwc";
    check_len(K, "input", dims.len(), input.len())?;
    check_len(K, "out", dims.len(), out.len())?;
    let (h, w, c) = (dims.h, dims.w, dims.c);
    if dims.is_empty() {
        return Ok(());
    }
    out.par_chunks_mut(w * c).enumerate().for_each(|(row, o)| {
        let (n, y) = (row / h, row % h);
        for x in 0..w {
            for ch in 0..c {
                o[x * c + ch] = input[((n * c + ch) * h + y) * w + x];
            }
        }
    });
    Ok(())
}

/// Reorders `[n, h, w, c]` into `[n, c, h, w]`.
pub fn nhwc_to_nchw(input: &[f32], dims: Nhwc, out: &mut [f32]) -> Result<()> {
    const K: &str = "nhwc_to_nchw";
    check_len(K, "input", dims.len(), input.len())?;
    check_len(K, "out", dims.len(), out.len())?;
    let (h, w, c) = (dims.h, dims.w, dims.c);
    if dims.is_empty() {
        return Ok(());
    }
    out.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(plane, o)| {
            let (n, ch) = (plane / c, plane % c);
            for (p, v) in o.iter_mut().enumerate() {
                *v = input[(n * h * w + p) * c + ch];
            }
        });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_cover_the_matrix_exactly_once_on_panel_boundaries() {
        for &(m, n) in &[
            (1, 1),
            (49, 1280),
            (3136, 24),
            (12544, 32),
            (7, 1000),
            (100, 17),
        ] {
            let mut seen = vec![0u8; m * n];
            for t in blocks(m, n) {
                assert_eq!(t.c0 % NR, 0, "m={m} n={n}");
                for r in t.r0..t.r1 {
                    for c in t.c0..t.c1 {
                        seen[r * n + c] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "m={m} n={n}");
        }
    }

    #[test]
    fn tf_same_puts_the_odd_pixel_after() {
        let w = Window::tf_same(224, 224, 3, 2).unwrap();
        assert_eq!((w.pad_top, w.out_h), (0, 112));
        let w = Window::tf_same(225, 225, 3, 2).unwrap();
        assert_eq!((w.pad_top, w.out_h), (1, 113));
        let w = Window::tf_same(14, 14, 5, 1).unwrap();
        assert_eq!((w.pad_top, w.out_h), (2, 14));
    }

    #[test]
    fn symmetric_window_refuses_a_kernel_larger_than_the_input() {
        assert!(Window::symmetric(2, 2, 7, 2, 0).is_err());
        let w = Window::symmetric(99, 75, 7, 2, 3).unwrap();
        assert_eq!((w.out_h, w.out_w), (50, 38));
    }

    #[test]
    fn kernels_refuse_wrong_buffer_lengths() {
        let dims = Nhwc {
            n: 1,
            h: 4,
            w: 4,
            c: 2,
        };
        let win = Window::symmetric(4, 4, 3, 1, 1).unwrap();
        let input = vec![0.0; dims.len()];
        let mut out = vec![0.0; dims.len() - 1];
        let err = depthwise_conv(
            &input,
            dims,
            win,
            &[0.0; 18],
            &[0.0; 2],
            Activation::Relu,
            &mut out,
        )
        .unwrap_err();
        assert!(
            matches!(err, KernelError::BufferSize { buffer: "out", .. }),
            "{err}"
        );
    }

    #[test]
    fn layout_round_trip_is_identity() {
        let dims = Nhwc {
            n: 2,
            h: 3,
            w: 5,
            c: 7,
        };
        let x: Vec<f32> = (0..dims.len()).map(|i| i as f32).collect();
        let mut nhwc = vec![0.0; dims.len()];
        let mut back = vec![0.0; dims.len()];
        nchw_to_nhwc(&x, dims, &mut nhwc).unwrap();
        nhwc_to_nchw(&nhwc, dims, &mut back).unwrap();
        assert_eq!(x, back);
        // Channel 1 of pixel (0, 0, 1) is NCHW index (0·7 + 1)·15 + 1.
        assert_eq!(nhwc[7 + 1], 16.0);
    }
}
