//! The inverted-residual block (1×1 expand → depthwise → 1×1 project, + residual) as one
//! pass over the image in bands of rows.
//!
//! Run layer by layer, the expanded activation (up to 112×112×96 values, 4.8 MB) goes out
//! to memory after the expand GEMM and comes back for the depthwise convolution, and the
//! depthwise output does the same before the project GEMM. Here a few rows are expanded at
//! a time into a small buffer, the depthwise rows that need them are computed at once, and
//! the project GEMM consumes those while they are still in cache: neither intermediate ever
//! exists whole.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::kernels::{depthwise_row_dispatch, Activation, Nhwc, PackedWeights, SharedOut, Window};
use crate::matmul::{gemm_block, Block};

/// A 1×1 convolution: packed weights, folded bias, activation.
pub(crate) struct Pointwise<'a> {
    pub weights: &'a PackedWeights,
    pub bias: &'a [f32],
    pub act: Activation,
}

/// A depthwise convolution: `[k·k, c]` taps, folded bias, activation, window.
pub(crate) struct Depthwise<'a> {
    pub taps: &'a [f32],
    pub bias: &'a [f32],
    pub act: Activation,
    pub win: Window,
}

/// Depthwise output pixels per project GEMM call (at least; whole rows are taken).
const MIN_GROUP_PIXELS: usize = 64;

thread_local! {
    /// Expanded rows and depthwise rows of the current band; grow once, then reused.
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Runs one inverted-residual block on one image.
///
/// `input` is the block input (NHWC, batch 1, `dims`), `out` its output
/// (`win.out_h × win.out_w × project.n`), `residual` (laid out like `out`, not aliasing it)
/// is added before the project's activation. `bands` > 1 splits the output rows into that
/// many bands run in parallel; each recomputes the few expanded rows its window shares with
/// the band above.
#[allow(clippy::too_many_arguments)]
pub(crate) fn inverted_residual(
    input: &[f32],
    dims: Nhwc,
    expand: Option<&Pointwise>,
    depthwise: &Depthwise,
    project: &Pointwise,
    residual: Option<&[f32]>,
    out: &mut [f32],
    bands: usize,
) {
    let win = depthwise.win;
    let exp_c = expand.map_or(dims.c, |e| e.weights.n());
    let cout = project.weights.n();
    debug_assert_eq!(dims.n, 1);
    debug_assert_eq!(input.len(), dims.len());
    debug_assert_eq!(out.len(), win.out_h * win.out_w * cout);
    debug_assert!(residual.is_none_or(|r| r.len() == out.len()));
    let rows_per_band = win.out_h.div_ceil(bands.clamp(1, win.out_h.max(1)));
    let shared = SharedOut(out.as_mut_ptr());
    let run = |band: usize| {
        let oy0 = band * rows_per_band;
        let oy1 = (oy0 + rows_per_band).min(win.out_h);
        SCRATCH.with(|cell| {
            let mut scratch = cell.borrow_mut();
            let (expanded, dw_out) = &mut *scratch;
            // SAFETY: this band writes output rows oy0..oy1 only.
            unsafe {
                band_rows(
                    input, dims, expand, depthwise, project, residual, shared, exp_c, cout, oy0,
                    oy1, expanded, dw_out,
                )
            }
        })
    };
    let band_count = win.out_h.div_ceil(rows_per_band.max(1));
    if band_count <= 1 {
        (0..band_count).for_each(run);
    } else {
        (0..band_count).into_par_iter().for_each(run);
    }
}

/// Output rows `oy0..oy1` of the block, in groups of rows.
///
/// # Safety
/// `out` is valid for the whole output and no one else writes rows `oy0..oy1` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn band_rows(
    input: &[f32],
    dims: Nhwc,
    expand: Option<&Pointwise>,
    depthwise: &Depthwise,
    project: &Pointwise,
    residual: Option<&[f32]>,
    out: SharedOut,
    exp_c: usize,
    cout: usize,
    oy0: usize,
    oy1: usize,
    expanded: &mut Vec<f32>,
    dw_out: &mut Vec<f32>,
) {
    let win = depthwise.win;
    let (k, stride) = (win.k, win.stride);
    let row_len = dims.w * exp_c;
    let group = MIN_GROUP_PIXELS.div_ceil(win.out_w.max(1)).max(1);
    let cap_rows = ((group - 1) * stride + k).min(dims.h);
    if expand.is_some() && expanded.len() < cap_rows * row_len {
        expanded.resize(cap_rows * row_len, 0.0);
    }
    let out_row_len = win.out_w * exp_c;
    if dw_out.len() < group * out_row_len {
        dw_out.resize(group * out_row_len, 0.0);
    }
    // Expanded rows first..first + held are in `expanded`.
    let mut first = 0usize;
    let mut held = 0usize;
    let dw_dims = Nhwc { c: exp_c, ..dims };
    let mut g0 = oy0;
    while g0 < oy1 {
        let g1 = (g0 + group).min(oy1);
        let need_lo = (g0 * stride).saturating_sub(win.pad_top).min(dims.h);
        let need_hi = ((g1 - 1) * stride + k)
            .saturating_sub(win.pad_top)
            .min(dims.h);
        // The depthwise rows read their input from here, `base` being its first image row.
        let (source, base): (&[f32], usize) = match expand {
            None => (input, 0),
            Some(e) => {
                // Keep the rows this group shares with the last one, move them to the front.
                let keep_from = need_lo.max(first);
                let keep_to = first + held;
                if keep_from < keep_to {
                    let at = (keep_from - first) * row_len;
                    expanded.copy_within(at..(keep_to - first) * row_len, 0);
                    first = keep_from;
                    held = keep_to - keep_from;
                } else {
                    first = need_lo;
                    held = 0;
                }
                let new_from = first + held;
                if new_from < need_hi {
                    let pixels = (need_hi - new_from) * dims.w;
                    gemm_block(
                        Block {
                            r0: 0,
                            r1: pixels,
                            c0: 0,
                            c1: exp_c,
                        },
                        input.as_ptr().add(new_from * dims.w * dims.c),
                        dims.c,
                        e.weights,
                        e.bias,
                        e.act,
                        std::ptr::null(),
                        expanded.as_mut_ptr().add(held * row_len),
                        exp_c,
                    );
                    held = need_hi - first;
                }
                (&expanded[..held * row_len], first)
            }
        };
        for oy in g0..g1 {
            let at = (oy - g0) * out_row_len;
            depthwise_row_dispatch(
                source,
                base,
                dw_dims,
                win,
                depthwise.taps,
                depthwise.bias,
                depthwise.act,
                oy,
                &mut dw_out[at..at + out_row_len],
            );
        }
        let pixels = (g1 - g0) * win.out_w;
        let first_pixel = g0 * win.out_w;
        gemm_block(
            Block {
                r0: 0,
                r1: pixels,
                c0: 0,
                c1: cout,
            },
            dw_out.as_ptr(),
            exp_c,
            project.weights,
            project.bias,
            project.act,
            residual.map_or(std::ptr::null(), |r| r.as_ptr().add(first_pixel * cout)),
            out.ptr().add(first_pixel * cout),
            cout,
        );
        g0 = g1;
    }
}
