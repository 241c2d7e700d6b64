//! Image to input tensor: resizing (antialiased bilinear, as PIL and torchvision do), cropping
//! or letterboxing, and ImageNet normalisation into CHW floats.

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::U8x3;
use fast_image_resize::{FilterType, ResizeAlg, ResizeOptions, Resizer};
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
            let resized = resize(image, new_w, new_h)?;
            // CenterCrop uses Python's round(), which rounds halves to even.
            let left = ((new_w - size) as f64 / 2.0).round_ties_even() as u32;
            let top = ((new_h - size) as f64 / 2.0).round_ties_even() as u32;
            image::imageops::crop_imm(&resized, left, top, size, size).to_image()
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

fn resize(image: &RgbImage, width: u32, height: u32) -> Result<RgbImage, String> {
    if image.dimensions() == (width, height) {
        return Ok(image.clone());
    }
    let mut resized = RgbImage::new(width, height);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear));
    // The typed call instantiates the resizer for RGB8 only, not for every pixel type.
    let (src_w, src_h) = image.dimensions();
    let src = TypedImageRef::<U8x3>::from_buffer(src_w, src_h, image.as_raw())
        .map_err(|e| format!("resize source: {e}"))?;
    let mut dst =
        TypedImage::<U8x3>::from_buffer(width, height, &mut resized).map_err(|e| format!("resize target: {e}"))?;
    Resizer::new()
        .resize_typed(&src, &mut dst, &options)
        .map_err(|e| format!("resize to {width}x{height}: {e}"))?;
    Ok(resized)
}

fn normalize(image: &RgbImage) -> Vec<f32> {
    let plane = (image.width() * image.height()) as usize;
    let mut out = vec![0f32; 3 * plane];
    for (channel, (mean, std)) in IMAGENET_MEAN.iter().zip(IMAGENET_STD).enumerate() {
        let target = &mut out[channel * plane..(channel + 1) * plane];
        for (value, pixel) in target.iter_mut().zip(image.pixels()) {
            *value = (pixel[channel] as f32 / 255.0 - mean) / std;
        }
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

    #[test]
    fn empty_image_is_an_error() {
        let image = RgbImage::new(0, 10);
        assert!(preprocess_image(&image, Preprocess::Squash, ModelKind::Vgg16).is_err());
    }
}
