//! Pillow's bilinear resize, bit for bit, on planes: the resampling behind `preprocess`.
//!
//! Pillow filters rows first, a 1-D filter along each row whose window differs per output
//! pixel: short, unaligned dot products that do not vectorise. Transposed, the same pass is
//! a sum of whole source columns, each scaled by one weight, which does; the vertical pass
//! then works on whole rows again. Sums, weights and rounding are Pillow's, so the bytes are
//! too; the transposes are 16×16 byte tiles in SSE2 registers on x86-64.

use image::RgbImage;

/// An image as three 8-bit planes (R, G, B), each `width × height` row-major, one after the
/// other: the layout of the model input.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Planes {
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) data: Vec<u8>,
}

impl Planes {
    pub(crate) fn filled(width: usize, height: usize, value: u8) -> Self {
        Planes {
            width,
            height,
            data: vec![value; 3 * width * height],
        }
    }

    pub(crate) fn plane_len(&self) -> usize {
        self.width * self.height
    }

    /// The `(x, y, w, h)` region of an interleaved RGB image.
    fn crop_of(image: &RgbImage, (x, y, w, h): (usize, usize, usize, usize)) -> Self {
        let mut planes = Planes::filled(w, h, 0);
        let stride = image.width() as usize * 3;
        let (red, rest) = planes.data.split_at_mut(w * h);
        let (green, blue) = rest.split_at_mut(w * h);
        for row in 0..h {
            let line = &image.as_raw()[(y + row) * stride + x * 3..][..w * 3];
            let span = row * w..(row + 1) * w;
            for (((pixel, r), g), b) in line
                .chunks_exact(3)
                .zip(&mut red[span.clone()])
                .zip(&mut green[span.clone()])
                .zip(&mut blue[span])
            {
                (*r, *g, *b) = (pixel[0], pixel[1], pixel[2]);
            }
        }
        planes
    }

    /// Copies `other` in with its top-left corner at `(x, y)`; it must fit.
    pub(crate) fn paste(&mut self, other: &Planes, x: usize, y: usize) {
        for c in 0..3 {
            for row in 0..other.height {
                let from = c * other.plane_len() + row * other.width;
                let to = c * self.plane_len() + (y + row) * self.width + x;
                self.data[to..to + other.width]
                    .copy_from_slice(&other.data[from..from + other.width]);
            }
        }
    }
}

/// Bilinear resize with antialiasing, bit-exact with Pillow's `Image.resize(..., BILINEAR)`
/// (which torchvision's `Resize` calls on PIL images): a separable triangle filter widened by
/// the scale when shrinking, 22-bit fixed-point weights, horizontal pass first, each pass
/// rounded to 8 bits.
pub(crate) fn resize(image: &RgbImage, width: u32, height: u32) -> Result<Planes, String> {
    resize_region(image, width, height, (0, 0, width, height))
}

/// The `(x, y, w, h)` region of [`resize`]`(image, width, height)`, bit for bit, computing
/// only the pixels in it.
pub(crate) fn resize_region(
    image: &RgbImage,
    width: u32,
    height: u32,
    region: (u32, u32, u32, u32),
) -> Result<Planes, String> {
    let (in_w, in_h) = image.dimensions();
    let (rx, ry, rw, rh) = region;
    if width == 0 || height == 0 {
        return Err(format!("resize to {width}x{height}"));
    }
    if rw == 0 || rh == 0 || rx + rw > width || ry + rh > height {
        return Err(format!(
            "region {rw}x{rh}+{rx}+{ry} of a {width}x{height} resize"
        ));
    }
    let region = (rx as usize, ry as usize, rw as usize, rh as usize);
    if (in_w, in_h) == (width, height) {
        return Ok(Planes::crop_of(image, region));
    }
    let horizontal = Filter::new(in_w as usize, width as usize);
    let vertical = Filter::new(in_h as usize, height as usize);
    Ok(resample(image, &horizontal, &vertical, region))
}

/// The two passes, compiled for the widest vector unit the CPU has.
fn resample(
    image: &RgbImage,
    horizontal: &Filter,
    vertical: &Filter,
    region: (usize, usize, usize, usize),
) -> Planes {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bw")
        {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { resample_avx512(image, horizontal, vertical, region) };
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { resample_avx2(image, horizontal, vertical, region) };
        }
    }
    resample_portable(image, horizontal, vertical, region)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx2")]
unsafe fn resample_avx512(
    image: &RgbImage,
    horizontal: &Filter,
    vertical: &Filter,
    region: (usize, usize, usize, usize),
) -> Planes {
    resample_portable(image, horizontal, vertical, region)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn resample_avx2(
    image: &RgbImage,
    horizontal: &Filter,
    vertical: &Filter,
    region: (usize, usize, usize, usize),
) -> Planes {
    resample_portable(image, horizontal, vertical, region)
}

#[inline(always)]
fn resample_portable(
    image: &RgbImage,
    horizontal: &Filter,
    vertical: &Filter,
    (rx, ry, rw, rh): (usize, usize, usize, usize),
) -> Planes {
    // The source rows and columns that the region's windows read.
    let first_row = vertical.bounds[ry].0;
    let last_row = (ry..ry + rh)
        .map(|y| vertical.bounds[y].0 + vertical.bounds[y].1)
        .max()
        .unwrap_or(first_row);
    let first_col = horizontal.bounds[rx].0;
    let last_col = (rx..rx + rw)
        .map(|x| horizontal.bounds[x].0 + horizontal.bounds[x].1)
        .max()
        .unwrap_or(first_col);
    let (rows, cols) = (last_row - first_row, last_col - first_col);
    let stride = image.width() as usize * 3;

    // The source bytes transposed: row `3x + c` holds channel c of source column x, top down.
    let mut columns = vec![0u8; 3 * cols * rows];
    transpose(
        &image.as_raw()[first_row * stride + first_col * 3..],
        stride,
        &mut columns,
        rows,
        (rows, 3 * cols),
    );

    // Horizontal pass: output column j = Σ weight × source column, rounded to 8 bits;
    // filtered[c][j] holds it top down.
    let mut filtered = vec![0u8; 3 * rw * rows];
    let mut sums = vec![0i32; rows];
    for c in 0..3 {
        for j in 0..rw {
            let (start, weights) = horizontal.weights(rx + j);
            sums.fill(ROUNDING);
            for (k, &weight) in weights.iter().enumerate() {
                let column = &columns[(3 * (start - first_col + k) + c) * rows..][..rows];
                for (sum, &value) in sums.iter_mut().zip(column) {
                    *sum += value as i32 * weight;
                }
            }
            let out = &mut filtered[(c * rw + j) * rows..][..rows];
            for (value, &sum) in out.iter_mut().zip(&sums) {
                *value = clip8(sum);
            }
        }
    }

    // Back to rows, plane by plane.
    let mut across = vec![0u8; 3 * rows * rw];
    for (from, to) in filtered
        .chunks_exact(rw * rows)
        .zip(across.chunks_exact_mut(rw * rows))
    {
        transpose(from, rows, to, rw, (rw, rows));
    }

    // Vertical pass, whole rows at a time.
    let mut out = Planes::filled(rw, rh, 0);
    let mut sums = vec![0i32; rw];
    for (plane, target) in across
        .chunks_exact(rows * rw)
        .zip(out.data.chunks_exact_mut(rw * rh))
    {
        for (y, target) in target.chunks_exact_mut(rw).enumerate() {
            let (start, weights) = vertical.weights(ry + y);
            sums.fill(ROUNDING);
            for (k, &weight) in weights.iter().enumerate() {
                let row = &plane[(start - first_row + k) * rw..][..rw];
                for (sum, &value) in sums.iter_mut().zip(row) {
                    *sum += value as i32 * weight;
                }
            }
            for (value, &sum) in target.iter_mut().zip(&sums) {
                *value = clip8(sum);
            }
        }
    }
    out
}

/// `to[x · to_stride + y] = from[y · from_stride + x]` for `y < rows`, `x < cols`.
#[inline(always)]
fn transpose(
    from: &[u8],
    from_stride: usize,
    to: &mut [u8],
    to_stride: usize,
    (rows, cols): (usize, usize),
) {
    // Whole 16×16 tiles in registers where the CPU has SSE2 (every x86-64 does).
    #[cfg(target_arch = "x86_64")]
    let (full_rows, full_cols) = {
        let (full_rows, full_cols) = (rows / 16 * 16, cols / 16 * 16);
        for y in (0..full_rows).step_by(16) {
            for x in (0..full_cols).step_by(16) {
                let (from_at, to_at) = (y * from_stride + x, x * to_stride + y);
                sse2::transpose_tile(from, from_at, from_stride, to, to_at, to_stride);
            }
        }
        (full_rows, full_cols)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let (full_rows, full_cols) = (0, 0);
    // The ragged right and bottom edges, byte by byte.
    for y in 0..rows {
        let line = &from[y * from_stride..];
        let first = if y < full_rows { full_cols } else { 0 };
        for x in first..cols {
            to[x * to_stride + y] = line[x];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod sse2 {
    use std::arch::x86_64::*;

    /// One 16×16 byte tile: 16 row loads, four rounds of unpacks (bytes, pairs, quads,
    /// halves), 16 column stores. SSE2 is part of x86-64, so no detection is needed.
    #[inline(always)]
    pub(super) fn transpose_tile(
        from: &[u8],
        from_at: usize,
        from_stride: usize,
        to: &mut [u8],
        to_at: usize,
        to_stride: usize,
    ) {
        // Both ends of the tile in bounds, so the pointer arithmetic below stays inside.
        let _ = from[from_at + 15 * from_stride + 15];
        let _ = to[to_at + 15 * to_stride + 15];
        // SAFETY: every row read and written lies between the two indices checked above;
        // the loads and stores are unaligned ones.
        unsafe {
            let rows: [__m128i; 16] = std::array::from_fn(|i| {
                _mm_loadu_si128(from.as_ptr().add(from_at + i * from_stride) as *const __m128i)
            });
            // After the round of group 2^j, register i holds 2^j rows' worth of
            // interleaved elements; after the last, column i.
            let pairs = unpack_round(rows, 2, |p, q| {
                (_mm_unpacklo_epi8(p, q), _mm_unpackhi_epi8(p, q))
            });
            let quads = unpack_round(pairs, 4, |p, q| {
                (_mm_unpacklo_epi16(p, q), _mm_unpackhi_epi16(p, q))
            });
            let octets = unpack_round(quads, 8, |p, q| {
                (_mm_unpacklo_epi32(p, q), _mm_unpackhi_epi32(p, q))
            });
            let columns = unpack_round(octets, 16, |p, q| {
                (_mm_unpacklo_epi64(p, q), _mm_unpackhi_epi64(p, q))
            });
            for (i, column) in columns.into_iter().enumerate() {
                _mm_storeu_si128(
                    to.as_mut_ptr().add(to_at + i * to_stride) as *mut __m128i,
                    column,
                );
            }
        }
    }

    /// One round of the transpose: within each group of `group` registers, output `m`
    /// interleaves inputs `m / 2` and `group / 2 + m / 2` of the group, their low halves for
    /// even `m`, their high halves for odd.
    #[inline(always)]
    fn unpack_round(
        input: [__m128i; 16],
        group: usize,
        unpack: impl Fn(__m128i, __m128i) -> (__m128i, __m128i),
    ) -> [__m128i; 16] {
        std::array::from_fn(|i| {
            let (first, m) = (i - i % group, i % group);
            let (low, high) = unpack(input[first + m / 2], input[first + group / 2 + m / 2]);
            if m % 2 == 0 {
                low
            } else {
                high
            }
        })
    }
}

/// Pillow's fixed-point precision for 8-bit resampling; its sums are 32-bit integers too, and
/// cannot overflow: the weights of one output pixel add up to about `1 << PRECISION_BITS`.
const PRECISION_BITS: u32 = 32 - 8 - 2;
const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

#[inline(always)]
fn clip8(sum: i32) -> u8 {
    (sum >> PRECISION_BITS).clamp(0, 255) as u8
}

/// The per-output-pixel source window and fixed-point weights of one resampling axis.
struct Filter {
    bounds: Vec<(usize, usize)>,
    weights: Vec<i32>,
    size: usize,
}

impl Filter {
    fn new(in_size: usize, out_size: usize) -> Self {
        let scale = in_size as f64 / out_size as f64;
        let filter_scale = scale.max(1.0);
        let support = filter_scale; // the triangle filter's support is 1
        let size = support.ceil() as usize * 2 + 1;
        let mut bounds = Vec::with_capacity(out_size);
        let mut weights = vec![0i32; out_size * size];
        let mut k = Vec::with_capacity(size);
        for (xx, kk) in weights.chunks_exact_mut(size).enumerate() {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filter_scale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize - xmin;
            k.clear();
            k.extend((0..xmax).map(|x| {
                let t = ((x + xmin) as f64 - center + 0.5) * ss;
                (1.0 - t.abs()).max(0.0)
            }));
            let total: f64 = k.iter().sum();
            for (slot, w) in kk.iter_mut().zip(&k) {
                let w = if total != 0.0 { w / total } else { *w };
                let rounding = if w < 0.0 { -0.5 } else { 0.5 };
                *slot = (w * (1i32 << PRECISION_BITS) as f64 + rounding) as i32;
            }
            bounds.push((xmin, xmax));
        }
        Filter {
            bounds,
            weights,
            size,
        }
    }

    #[inline(always)]
    fn weights(&self, out: usize) -> (usize, &[i32]) {
        let (start, len) = self.bounds[out];
        (start, &self.weights[out * self.size..out * self.size + len])
    }
}

#[cfg(test)]
mod tests {
    use image::Rgb;

    use super::*;

    fn interleaved(planes: &Planes) -> RgbImage {
        let plane = planes.plane_len();
        RgbImage::from_fn(planes.width as u32, planes.height as u32, |x, y| {
            let at = y as usize * planes.width + x as usize;
            Rgb([
                planes.data[at],
                planes.data[plane + at],
                planes.data[2 * plane + at],
            ])
        })
    }

    fn noise(width: u32, height: u32, seed: u32) -> RgbImage {
        let mut state = seed;
        RgbImage::from_fn(width, height, |_, _| {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            let b = state.to_le_bytes();
            Rgb([b[1], b[2], b[3]])
        })
    }

    /// Pillow's resampling written plainly, row by row, pixel by pixel: the reference for the
    /// transposed, vectorised passes.
    fn plain_resize(image: &RgbImage, width: u32, height: u32) -> RgbImage {
        let (in_w, in_h) = image.dimensions();
        let horizontal = Filter::new(in_w as usize, width as usize);
        let vertical = Filter::new(in_h as usize, height as usize);
        let across = RgbImage::from_fn(width, in_h, |x, y| {
            let (start, weights) = horizontal.weights(x as usize);
            let mut sum = [ROUNDING; 3];
            for (k, &w) in weights.iter().enumerate() {
                let pixel = image.get_pixel((start + k) as u32, y);
                for c in 0..3 {
                    sum[c] += pixel[c] as i32 * w;
                }
            }
            Rgb(sum.map(clip8))
        });
        RgbImage::from_fn(width, height, |x, y| {
            let (start, weights) = vertical.weights(y as usize);
            let mut sum = [ROUNDING; 3];
            for (k, &w) in weights.iter().enumerate() {
                let pixel = across.get_pixel(x, (start + k) as u32);
                for c in 0..3 {
                    sum[c] += pixel[c] as i32 * w;
                }
            }
            Rgb(sum.map(clip8))
        })
    }

    /// The transposed passes give the plain passes' bytes: down- and up-scaling, mixed,
    /// strong reduction, one-pixel sides.
    #[test]
    fn resampling_matches_the_plain_passes() {
        for (i, ((in_w, in_h), (w, h))) in [
            ((300, 400), (256, 341)),
            ((173, 91), (80, 50)),
            ((5, 3), (7, 4)),
            ((640, 480), (97, 131)),
            ((31, 200), (64, 17)),
            ((1, 9), (3, 2)),
            ((250, 1), (1, 1)),
        ]
        .into_iter()
        .enumerate()
        {
            let image = noise(in_w, in_h, i as u32 + 1);
            let got = interleaved(&resize(&image, w, h).unwrap());
            assert_eq!(got, plain_resize(&image, w, h), "{in_w}x{in_h} to {w}x{h}");
        }
    }
    #[test]
    fn a_resized_region_is_the_crop_of_the_full_resize() {
        let noise = noise(173, 91, 7);
        for ((w, h), (rx, ry, rw, rh)) in [
            ((80, 50), (0, 0, 80, 50)),
            ((80, 50), (13, 7, 40, 30)),
            ((300, 120), (299, 119, 1, 1)),
            ((173, 91), (5, 5, 100, 80)),
            ((64, 200), (0, 150, 64, 50)),
        ] {
            let full = interleaved(&resize(&noise, w, h).unwrap());
            let want = image::imageops::crop_imm(&full, rx, ry, rw, rh).to_image();
            let got = interleaved(&resize_region(&noise, w, h, (rx, ry, rw, rh)).unwrap());
            assert_eq!(got, want, "{w}x{h} region {rw}x{rh}+{rx}+{ry}");
        }
        assert!(resize_region(&noise, 80, 50, (70, 0, 20, 10)).is_err());
        assert!(resize_region(&noise, 80, 50, (0, 0, 0, 10)).is_err());
    }

    #[test]
    fn resize_is_bit_exact_with_pillow() {
        let pattern = |w: u32, h: u32| {
            RgbImage::from_fn(w, h, |x, y| {
                Rgb([
                    ((x * 37 + y * 11) % 256) as u8,
                    ((x * 5 + y * 53) % 256) as u8,
                    ((x * y * 7) % 256) as u8,
                ])
            })
        };
        let up: [u8; 84] = [
            0, 0, 0, 21, 3, 0, 48, 6, 0, 74, 10, 0, 100, 14, 0, 127, 17, 0, 148, 20, 0, 7, 33, 0,
            28, 36, 3, 55, 39, 6, 81, 43, 9, 107, 47, 12, 134, 50, 15, 155, 53, 18, 15, 73, 0, 36,
            76, 6, 63, 79, 12, 89, 83, 19, 115, 87, 26, 142, 90, 33, 163, 93, 39, 22, 106, 0, 43,
            109, 8, 70, 112, 18, 96, 116, 28, 122, 120, 38, 149, 123, 48, 170, 126, 56,
        ];
        let down: [u8; 36] = [
            62, 52, 9, 156, 67, 26, 89, 83, 45, 144, 98, 63, 86, 151, 30, 169, 166, 92, 102, 166,
            147, 168, 139, 158, 110, 78, 51, 165, 93, 153, 98, 95, 139, 192, 72, 135,
        ];
        assert_eq!(
            interleaved(&resize(&pattern(5, 3), 7, 4).unwrap())
                .as_raw()
                .as_slice(),
            &up
        );
        assert_eq!(
            interleaved(&resize(&pattern(13, 7), 4, 3).unwrap())
                .as_raw()
                .as_slice(),
            &down
        );
    }

    #[test]
    fn transposes_whole_tiles_and_ragged_edges() {
        for (rows, cols) in [(16, 16), (33, 50), (7, 3), (48, 17), (1, 40)] {
            let from_stride = cols + 5;
            let from: Vec<u8> = (0..rows * from_stride)
                .map(|i| (i * 7 % 251) as u8)
                .collect();
            let mut to = vec![0u8; cols * (rows + 2)];
            transpose(&from, from_stride, &mut to, rows + 2, (rows, cols));
            for y in 0..rows {
                for x in 0..cols {
                    assert_eq!(
                        to[x * (rows + 2) + y],
                        from[y * from_stride + x],
                        "{rows}x{cols}"
                    );
                }
            }
        }
    }
}
