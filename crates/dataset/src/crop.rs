//! Boxes and crops.

use image::RgbImage;
use serde::{Deserialize, Serialize};

/// A garment's box: `left`, `top`, `width`, `height` in pixels of the stored photo (after any
/// aspect-ratio rescale, see [`crate::AspectRatios`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    /// Left edge (x of the first column).
    pub left: f64,
    /// Top edge (y of the first row).
    pub top: f64,
    /// Width in pixels.
    pub width: f64,
    /// Height in pixels.
    pub height: f64,
}

impl std::fmt::Display for BBox {
    /// `left 10, top 20, 30x40`, as a person reads it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "left {}, top {}, {}x{}",
            self.left, self.top, self.width, self.height
        )
    }
}

/// A box that cannot be cropped.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CropError {
    /// A coordinate or the margin is NaN or infinite, or the margin is negative.
    #[error("box ({bbox}) with margin {margin} is not finite or has a negative margin")]
    Invalid {
        /// The box.
        bbox: BBox,
        /// The margin.
        margin: f64,
    },
    /// Nothing of the box (with its margin) lies inside the image.
    #[error(
        "box ({bbox}) with margin {margin} has zero area inside the {image_width}x{image_height} image"
    )]
    ZeroArea {
        /// The box.
        bbox: BBox,
        /// The margin.
        margin: f64,
        /// Image width.
        image_width: u32,
        /// Image height.
        image_height: u32,
    },
}

/// Integer pixel rectangle `[x0, x1) x [y0, y1)`, as produced by [`BBox::pixel_rect`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PixelRect {
    /// First column.
    pub x0: u32,
    /// First row.
    pub y0: u32,
    /// One past the last column.
    pub x1: u32,
    /// One past the last row.
    pub y1: u32,
}

impl PixelRect {
    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.x1 - self.x0
    }
    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.y1 - self.y0
    }
}

impl BBox {
    /// Builds a box.
    pub fn new(left: f64, top: f64, width: f64, height: f64) -> Self {
        BBox {
            left,
            top,
            width,
            height,
        }
    }

    /// The box multiplied by `factor` (all four fields), e.g. an aspect ratio.
    pub fn scaled(&self, factor: f64) -> BBox {
        BBox {
            left: self.left * factor,
            top: self.top * factor,
            width: self.width * factor,
            height: self.height * factor,
        }
    }

    /// `width * height`.
    pub fn area(&self) -> f64 {
        self.width * self.height
    }

    /// True when all fields are finite.
    pub fn is_finite(&self) -> bool {
        self.left.is_finite()
            && self.top.is_finite()
            && self.width.is_finite()
            && self.height.is_finite()
    }

    /// The pixels covered by the box grown by `margin` (a fraction of the box's width and
    /// height added on each side), clipped to a `image_width x image_height` image. Edges
    /// round outwards, so an integer box with no margin maps to exactly its pixels.
    pub fn pixel_rect(
        &self,
        margin: f64,
        image_width: u32,
        image_height: u32,
    ) -> Result<PixelRect, CropError> {
        if !self.is_finite() || !margin.is_finite() || margin < 0.0 {
            return Err(CropError::Invalid {
                bbox: *self,
                margin,
            });
        }
        let width = self.width.max(0.0);
        let height = self.height.max(0.0);
        let (mx, my) = (width * margin, height * margin);
        let clip = |v: f64, max: u32| v.clamp(0.0, max as f64) as u32;
        let x0 = clip((self.left - mx).floor(), image_width);
        let y0 = clip((self.top - my).floor(), image_height);
        let x1 = clip((self.left + width + mx).ceil(), image_width);
        let y1 = clip((self.top + height + my).ceil(), image_height);
        // A box of zero width or height stays empty even when its rounding would not be.
        if width <= 0.0 || height <= 0.0 || x1 <= x0 || y1 <= y0 {
            return Err(CropError::ZeroArea {
                bbox: *self,
                margin,
                image_width,
                image_height,
            });
        }
        Ok(PixelRect { x0, y0, x1, y1 })
    }
}

/// Crops `bbox` grown by `margin` (fraction of the box size added on each side) out of
/// `image`, clipped to the image. A box with zero area after clipping is a [`CropError`],
/// never a panic.
pub fn crop(image: &RgbImage, bbox: &BBox, margin: f64) -> Result<RgbImage, CropError> {
    let rect = bbox.pixel_rect(margin, image.width(), image.height())?;
    Ok(image::imageops::crop_imm(image, rect.x0, rect.y0, rect.width(), rect.height()).to_image())
}

/// The box of a shop photo's garment: the pixels darker than `light_level` in their darkest
/// channel (a plain white or light grey background is lighter), ignoring rows and columns
/// with fewer than 1% of such pixels (JPEG noise). `None` when the photo has no plain light
/// background to trim: the box would cover nearly all of it, or almost nothing.
///
/// A street crop is tight around the garment while a catalog photo leaves white space around
/// it; cropping shop photos to this box makes the two frame the garment alike.
pub fn foreground_box(image: &RgbImage, light_level: u8) -> Option<BBox> {
    let (width, height) = image.dimensions();
    if width < 8 || height < 8 {
        return None;
    }
    let mut rows = vec![0u32; height as usize];
    let mut columns = vec![0u32; width as usize];
    for (x, y, pixel) in image.enumerate_pixels() {
        if pixel.0.iter().min().is_some_and(|&v| v < light_level) {
            rows[y as usize] += 1;
            columns[x as usize] += 1;
        }
    }
    let span = |counts: &[u32], other_side: u32| -> Option<(usize, usize)> {
        let needed = (other_side / 100).max(2);
        let first = counts.iter().position(|&c| c >= needed)?;
        let last = counts.iter().rposition(|&c| c >= needed)?;
        Some((first, last + 1))
    };
    let (top, bottom) = span(&rows, width)?;
    let (left, right) = span(&columns, height)?;
    let area = ((right - left) * (bottom - top)) as f64;
    let whole = f64::from(width) * f64::from(height);
    if area > 0.95 * whole || area < 0.02 * whole {
        return None;
    }
    Some(BBox::new(
        left as f64,
        top as f64,
        (right - left) as f64,
        (bottom - top) as f64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foreground_of_a_garment_on_white() {
        let mut image = RgbImage::from_pixel(100, 80, image::Rgb([250, 250, 250]));
        for y in 20..60 {
            for x in 30..50 {
                image.put_pixel(x, y, image::Rgb([200, 30, 30]));
            }
        }
        // A speck of JPEG noise is not foreground.
        image.put_pixel(2, 2, image::Rgb([100, 100, 100]));
        let b = foreground_box(&image, 235).unwrap();
        assert_eq!((b.left, b.top, b.width, b.height), (30.0, 20.0, 20.0, 40.0));
        // A photo without a light background, or a blank one, is left alone.
        assert!(foreground_box(&gradient(100, 80), 235).is_none());
        let blank = RgbImage::from_pixel(100, 80, image::Rgb([255, 255, 255]));
        assert!(foreground_box(&blank, 235).is_none());
    }

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8, y as u8, 0]))
    }

    #[test]
    fn exact_integer_box() {
        let img = gradient(100, 80);
        let c = crop(&img, &BBox::new(10.0, 20.0, 30.0, 40.0), 0.0).unwrap();
        assert_eq!(c.dimensions(), (30, 40));
        assert_eq!(c.get_pixel(0, 0).0, [10, 20, 0]);
        assert_eq!(c.get_pixel(29, 39).0, [39, 59, 0]);
    }

    #[test]
    fn margin_and_clipping() {
        let img = gradient(100, 80);
        let c = crop(&img, &BBox::new(10.0, 20.0, 30.0, 40.0), 0.1).unwrap();
        assert_eq!(c.dimensions(), (36, 48));
        assert_eq!(c.get_pixel(0, 0).0, [7, 16, 0]);
        // Partly outside: clipped.
        let c = crop(&img, &BBox::new(90.0, -10.0, 30.0, 40.0), 0.0).unwrap();
        assert_eq!(c.dimensions(), (10, 30));
    }

    #[test]
    fn zero_area_is_an_error() {
        let img = gradient(100, 80);
        let zero = BBox::new(10.0, 10.0, 0.0, 0.0);
        assert!(matches!(
            crop(&img, &zero, 0.2),
            Err(CropError::ZeroArea { .. })
        ));
        let outside = BBox::new(200.0, 10.0, 10.0, 10.0);
        assert!(matches!(
            crop(&img, &outside, 0.0),
            Err(CropError::ZeroArea { .. })
        ));
        let nan = BBox::new(f64::NAN, 0.0, 1.0, 1.0);
        assert!(matches!(
            crop(&img, &nan, 0.0),
            Err(CropError::Invalid { .. })
        ));
        assert!(matches!(
            crop(&img, &BBox::new(0.0, 0.0, 5.0, 5.0), -0.1),
            Err(CropError::Invalid { .. })
        ));
    }
}
