//! Bounding boxes and crops.

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// A box in the stored photo's pixels (after any rescaling from the originally
/// downloaded photo's coordinates).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    /// Left edge, in pixels from the image's left side.
    pub left: f64,
    /// Top edge, in pixels from the image's top.
    pub top: f64,
    /// Width in pixels.
    pub width: f64,
    /// Height in pixels.
    pub height: f64,
}

/// A box that leaves nothing to crop.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("box {bbox:?} has no area inside the {image_width}x{image_height} image")]
pub struct CropError {
    /// The box, margin included.
    pub bbox: BBox,
    /// The image's width.
    pub image_width: u32,
    /// The image's height.
    pub image_height: u32,
}

impl BBox {
    /// The box grown by `margin` × its size on each side (a negative margin shrinks it).
    pub fn with_margin(&self, margin: f64) -> BBox {
        let dx = self.width * margin;
        let dy = self.height * margin;
        BBox {
            left: self.left - dx,
            top: self.top - dy,
            width: self.width + 2.0 * dx,
            height: self.height + 2.0 * dy,
        }
    }

    /// The whole-pixel rectangle `(x, y, width, height)` of this box clipped to a
    /// `width` × `height` image, or `None` when nothing of it is inside. Fractional
    /// edges are rounded outwards, so no part of the box is lost.
    pub fn clip(&self, width: u32, height: u32) -> Option<(u32, u32, u32, u32)> {
        let values = [self.left, self.top, self.width, self.height];
        if values.iter().any(|v| !v.is_finite()) || self.width <= 0.0 || self.height <= 0.0 {
            return None;
        }
        let x0 = self.left.floor().clamp(0.0, f64::from(width));
        let y0 = self.top.floor().clamp(0.0, f64::from(height));
        let x1 = (self.left + self.width).ceil().clamp(0.0, f64::from(width));
        let y1 = (self.top + self.height).ceil().clamp(0.0, f64::from(height));
        if x1 <= x0 || y1 <= y0 {
            return None;
        }
        Some((x0 as u32, y0 as u32, (x1 - x0) as u32, (y1 - y0) as u32))
    }
}

/// Crops `image` to `bbox` grown by `margin` (a fraction of the box's size on each side),
/// clipped to the image. A box with no area inside the image is an error.
pub fn crop(image: &RgbImage, bbox: &BBox, margin: f64) -> Result<RgbImage, CropError> {
    let grown = bbox.with_margin(margin);
    let (image_width, image_height) = image.dimensions();
    let (x, y, width, height) = grown.clip(image_width, image_height).ok_or(CropError {
        bbox: grown,
        image_width,
        image_height,
    })?;
    Ok(image::imageops::crop_imm(image, x, y, width, height).to_image())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bbox(left: f64, top: f64, width: f64, height: f64) -> BBox {
        BBox {
            left,
            top,
            width,
            height,
        }
    }

    #[test]
    fn crop_clips_to_the_image() {
        let image = RgbImage::new(10, 8);
        let cropped = crop(&image, &bbox(-5.0, 6.0, 8.0, 10.0), 0.0).unwrap();
        assert_eq!(cropped.dimensions(), (3, 2));
    }

    #[test]
    fn margin_grows_the_box_on_each_side() {
        let image = RgbImage::new(100, 100);
        let cropped = crop(&image, &bbox(40.0, 40.0, 20.0, 10.0), 0.5).unwrap();
        assert_eq!(cropped.dimensions(), (40, 20));
    }

    #[test]
    fn zero_area_and_outside_boxes_are_errors() {
        let image = RgbImage::new(10, 10);
        assert!(crop(&image, &bbox(3.0, 3.0, 0.0, 0.0), 0.0).is_err());
        assert!(crop(&image, &bbox(20.0, 3.0, 5.0, 5.0), 0.0).is_err());
        assert!(crop(&image, &bbox(f64::NAN, 3.0, 5.0, 5.0), 0.0).is_err());
    }
}
