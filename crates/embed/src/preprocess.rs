//! Image to input tensor: resizing (antialiased bilinear, bit-exact with Pillow, which torchvision
//! uses), cropping or letterboxing, and ImageNet normalisation into CHW floats.

use image::{Rgb, RgbImage};

use crate::{ModelKind, Preprocess};

/// ImageNet channel means (RGB), on the 0–1 scale.
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

const TORCHVISION_RESIZE: u32 = 256;
const TORCHVISION_CROP: u32 = 224;

/// The side of the square input tensor that `preprocess` produces for `model`.
pub fn input_size(preprocess: Preprocess, model: ModelKind) -> u32 {
    match preprocess {
        Preprocess::Torchvision => TORCHVISION_CROP,
        Preprocess::Squash | Preprocess::Pad => model.squash_size(),
    }
}

/// Turns an image into the model input: a `3 × S × S` CHW vector (S = [`input_size`]),
/// normalised with the ImageNet mean and standard deviation. Fails only on an empty image.
pub fn preprocess_image(
    image: &RgbImage,
    preprocess: Preprocess,
    model: ModelKind,
) -> Result<Vec<f32>, String> {
    let (width, height) = image.dimensions();
    if width == 0 || height == 0 {
        return Err(format!("empty image ({width}x{height})"));
    }
    let size = input_size(preprocess, model);
    let square = match preprocess {
        Preprocess::Torchvision => {
            // torchvision's Resize(256): the shorter side becomes 256, the longer one is truncated.
            let (new_w, new_h) = if width <= height {
                let long = (TORCHVISION_RESIZE as u64 * height as u64 / width as u64) as u32;
                (TORCHVISION_RESIZE, long)
            } else {
                let long = (TORCHVISION_RESIZE as u64 * width as u64 / height as u64) as u32;
                (long, TORCHVISION_RESIZE)
            };
            // CenterCrop uses Python's round(), which rounds halves to even. Only the crop of
            // the resized image is computed: each output pixel depends on its own window alone.
            let left = ((new_w - size) as f64 / 2.0).round_ties_even() as u32;
            let top = ((new_h - size) as f64 / 2.0).round_ties_even() as u32;
            resize_region(image, new_w, new_h, (left, top, size, size))?
        }
        Preprocess::Squash => resize(image, size, size)?,
        Preprocess::Pad => {
            let scale = size as f64 / width.max(height) as f64;
            let new_w = ((width as f64 * scale).round() as u32).clamp(1, size);
            let new_h = ((height as f64 * scale).round() as u32).clamp(1, size);
            let resized = resize(image, new_w, new_h)?;
            let mut canvas = RgbImage::from_pixel(size, size, Rgb([255, 255, 255]));
            image::imageops::replace(
                &mut canvas,
                &resized,
                ((size - new_w) / 2) as i64,
                ((size - new_h) / 2) as i64,
            );
            canvas
        }
    };
    Ok(normalize(&square))
}

/// Bilinear resize with antialiasing, bit-exact with Pillow's `Image.resize(..., BILINEAR)`
/// (which torchvision's `Resize` calls on PIL images): a separable triangle filter widened by
/// the scale when shrinking, 22-bit fixed-point weights, horizontal pass first, each pass
/// rounded to 8 bits.
fn resize(image: &RgbImage, width: u32, height: u32) -> Result<RgbImage, String> {
    resize_region(image, width, height, (0, 0, width, height))
}

/// The `(x, y, w, h)` region of [`resize`]`(image, width, height)`, bit for bit, computing
/// only the pixels in it.
fn resize_region(
    image: &RgbImage,
    width: u32,
    height: u32,
    region: (u32, u32, u32, u32),
) -> Result<RgbImage, String> {
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
    if (in_w, in_h) == (width, height) {
        return Ok(image::imageops::crop_imm(image, rx, ry, rw, rh).to_image());
    }
    let horizontal = Filter::new(in_w as usize, width as usize);
    let vertical = Filter::new(in_h as usize, height as usize);
    let (rx, ry, rw, rh) = (rx as usize, ry as usize, rw as usize, rh as usize);
    // Horizontal pass over the source rows the region's vertical windows read (they move
    // down monotonically), as Pillow does.
    let first_row = vertical.bounds[ry].0;
    let last_row = vertical.bounds[ry + rh - 1].0 + vertical.bounds[ry + rh - 1].1;
    let src = image.as_raw();
    let in_w = in_w as usize;
    let mut rows = vec![0u8; (last_row - first_row) * rw * 3];
    for (y, row) in (first_row..last_row).zip(rows.chunks_exact_mut(rw * 3)) {
        let line = &src[y * in_w * 3..(y + 1) * in_w * 3];
        for (x, out) in row.chunks_exact_mut(3).enumerate() {
            let (start, weights) = horizontal.weights(rx + x);
            let taps = &line[start * 3..(start + weights.len()) * 3];
            let mut sum = [ROUNDING; 3];
            for (pixel, &w) in taps.chunks_exact(3).zip(weights) {
                sum[0] += pixel[0] as i32 * w;
                sum[1] += pixel[1] as i32 * w;
                sum[2] += pixel[2] as i32 * w;
            }
            out[0] = clip8(sum[0]);
            out[1] = clip8(sum[1]);
            out[2] = clip8(sum[2]);
        }
    }
    // Whole rows at a time, so that the compiler vectorises the multiply-adds.
    let mut out = vec![0u8; rw * rh * 3];
    let mut sums = vec![0i32; rw * 3];
    for (y, row) in out.chunks_exact_mut(rw * 3).enumerate() {
        let (start, weights) = vertical.weights(ry + y);
        let start = start - first_row;
        sums.fill(ROUNDING);
        for (k, &w) in weights.iter().enumerate() {
            let source = &rows[(start + k) * rw * 3..(start + k + 1) * rw * 3];
            for (sum, &value) in sums.iter_mut().zip(source) {
                *sum += value as i32 * w;
            }
        }
        for (value, &sum) in row.iter_mut().zip(&sums) {
            *value = clip8(sum);
        }
    }
    RgbImage::from_raw(rw as u32, rh as u32, out).ok_or_else(|| "resize buffer size".to_string())
}

/// Pillow's fixed-point precision for 8-bit resampling; its sums are 32-bit integers too, and
/// cannot overflow: the weights of one output pixel add up to about `1 << PRECISION_BITS`.
const PRECISION_BITS: u32 = 32 - 8 - 2;
const ROUNDING: i32 = 1 << (PRECISION_BITS - 1);

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

    fn weights(&self, out: usize) -> (usize, &[i32]) {
        let (start, len) = self.bounds[out];
        (start, &self.weights[out * self.size..out * self.size + len])
    }
}

/// `(value / 255 − mean) / std` per channel into CHW planes, through a table of the 256
/// possible values per channel (the same f32 operations, once each).
fn normalize(image: &RgbImage) -> Vec<f32> {
    let plane = (image.width() * image.height()) as usize;
    let mut table = [[0f32; 256]; 3];
    for (channel, row) in table.iter_mut().enumerate() {
        let (mean, std) = (IMAGENET_MEAN[channel], IMAGENET_STD[channel]);
        for (value, slot) in row.iter_mut().enumerate() {
            *slot = (value as f32 / 255.0 - mean) / std;
        }
    }
    let mut out = Vec::with_capacity(3 * plane);
    for (channel, table) in table.iter().enumerate() {
        let values = image
            .as_raw()
            .chunks_exact(3)
            .map(|pixel| table[pixel[channel] as usize]);
        out.extend(values);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        })
    }

    /// The region path computes exactly the crop of the full resize (up- and down-scaling,
    /// regions at the edges), and refuses regions outside it.
    #[test]
    fn a_resized_region_is_the_crop_of_the_full_resize() {
        let mut state = 7u32;
        let noise = RgbImage::from_fn(173, 91, |_, _| {
            state = state.wrapping_mul(1664525).wrapping_add(1013904223);
            let b = state.to_le_bytes();
            Rgb([b[1], b[2], b[3]])
        });
        for ((w, h), (rx, ry, rw, rh)) in [
            ((80, 50), (0, 0, 80, 50)),
            ((80, 50), (13, 7, 40, 30)),
            ((300, 120), (299, 119, 1, 1)),
            ((173, 91), (5, 5, 100, 80)),
            ((64, 200), (0, 150, 64, 50)),
        ] {
            let full = resize(&noise, w, h).unwrap();
            let want = image::imageops::crop_imm(&full, rx, ry, rw, rh).to_image();
            let got = resize_region(&noise, w, h, (rx, ry, rw, rh)).unwrap();
            assert_eq!(got, want, "{w}x{h} region {rw}x{rh}+{rx}+{ry}");
        }
        assert!(resize_region(&noise, 80, 50, (70, 0, 20, 10)).is_err());
        assert!(resize_region(&noise, 80, 50, (0, 0, 0, 10)).is_err());
    }

    #[test]
    fn sizes_follow_model_and_mode() {
        let image = gradient(300, 200);
        for (mode, model, side) in [
            (Preprocess::Torchvision, ModelKind::ResNet50, 224),
            (Preprocess::Squash, ModelKind::MobileNetV2, 224),
            (Preprocess::Squash, ModelKind::Vgg16, 250),
            (Preprocess::Pad, ModelKind::ResNet50, 250),
        ] {
            let out = preprocess_image(&image, mode, model).unwrap();
            assert_eq!(out.len(), 3 * side * side, "{mode} {model}");
        }
    }

    #[test]
    fn constant_image_normalises_to_constant_planes() {
        let image = RgbImage::from_pixel(97, 311, Rgb([255, 0, 128]));
        let out =
            preprocess_image(&image, Preprocess::Torchvision, ModelKind::MobileNetV2).unwrap();
        let plane = 224 * 224;
        let want = [
            (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0],
            -IMAGENET_MEAN[1] / IMAGENET_STD[1],
            (128.0 / 255.0 - IMAGENET_MEAN[2]) / IMAGENET_STD[2],
        ];
        for c in 0..3 {
            for v in &out[c * plane..(c + 1) * plane] {
                assert!(
                    (v - want[c]).abs() < 1e-5,
                    "channel {c}: {v} vs {}",
                    want[c]
                );
            }
        }
    }

    #[test]
    fn pad_letterboxes_onto_white() {
        let image = RgbImage::from_pixel(200, 100, Rgb([0, 0, 0]));
        let out = preprocess_image(&image, Preprocess::Pad, ModelKind::MobileNetV2).unwrap();
        let white = (1.0 - IMAGENET_MEAN[0]) / IMAGENET_STD[0];
        let black = -IMAGENET_MEAN[0] / IMAGENET_STD[0];
        // Red plane, row 0 is padding; the middle row is image.
        assert!((out[0] - white).abs() < 1e-5);
        assert!((out[112 * 224 + 112] - black).abs() < 1e-5);
    }

    /// Pillow 11 `Image.resize(size, Image.BILINEAR)` of the same pattern.
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
            resize(&pattern(5, 3), 7, 4).unwrap().as_raw().as_slice(),
            &up
        );
        assert_eq!(
            resize(&pattern(13, 7), 4, 3).unwrap().as_raw().as_slice(),
            &down
        );
    }

    #[test]
    fn empty_image_is_an_error() {
        let image = RgbImage::new(0, 10);
        assert!(preprocess_image(&image, Preprocess::Squash, ModelKind::Vgg16).is_err());
    }
}
