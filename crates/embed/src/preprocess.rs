//! Image to input tensor: resizing (antialiased bilinear, bit-exact with Pillow, which torchvision
//! uses), cropping or letterboxing, and ImageNet normalisation into CHW floats.

use image::RgbImage;

use crate::resample::{resize, resize_region, Planes};
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

/// The fewest pixels the shorter side of a source image needs for the preprocessing to work
/// from full detail (torchvision resizes the shorter side to 256 before its 224 crop; squash
/// and pad resize to the input side). Larger sources may be decoded at reduced scale.
pub fn source_side(preprocess: Preprocess, model: ModelKind) -> u32 {
    match preprocess {
        Preprocess::Torchvision => TORCHVISION_RESIZE,
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
    let side = input_size(preprocess, model) as usize;
    let mut out = vec![0f32; 3 * side * side];
    preprocess_into(image, preprocess, model, &mut out)?;
    Ok(out)
}

/// [`preprocess_image`] into `out` (`3 × S × S` values), so that a batch is prepared in place.
pub(crate) fn preprocess_into(
    image: &RgbImage,
    preprocess: Preprocess,
    model: ModelKind,
    out: &mut [f32],
) -> Result<(), String> {
    let (width, height) = image.dimensions();
    if width == 0 || height == 0 {
        return Err(format!("empty image ({width}x{height})"));
    }
    let size = input_size(preprocess, model);
    if out.len() != 3 * (size * size) as usize {
        return Err(format!(
            "an input buffer of {} values for a {size}x{size} image",
            out.len()
        ));
    }
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
            let mut canvas = Planes::filled(size as usize, size as usize, 255);
            canvas.paste(
                &resized,
                ((size - new_w) / 2) as usize,
                ((size - new_h) / 2) as usize,
            );
            canvas
        }
    };
    normalize(&square, out);
    Ok(())
}

/// `(value / 255 − mean) / std` per channel, plane by plane into `out`.
fn normalize(planes: &Planes, out: &mut [f32]) {
    let plane = planes.plane_len();
    for (channel, (values, out)) in planes
        .data
        .chunks_exact(plane)
        .zip(out.chunks_exact_mut(plane))
        .enumerate()
    {
        let (mean, std) = (IMAGENET_MEAN[channel], IMAGENET_STD[channel]);
        for (slot, &value) in out.iter_mut().zip(values) {
            *slot = (value as f32 / 255.0 - mean) / std;
        }
    }
}

#[cfg(test)]
mod tests {
    use image::{Rgb, RgbImage};

    use super::*;

    fn gradient(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            Rgb([(x % 256) as u8, (y % 256) as u8, 128])
        })
    }

    /// The region path computes exactly the crop of the full resize (up- and down-scaling,
    /// regions at the edges), and refuses regions outside it.
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
    fn empty_image_is_an_error() {
        let image = RgbImage::new(0, 10);
        assert!(preprocess_image(&image, Preprocess::Squash, ModelKind::Vgg16).is_err());
    }
}
