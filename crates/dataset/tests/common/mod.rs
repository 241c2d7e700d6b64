//! Test photos made here, so that the decoding tests need no shared data.

use image::{ImageEncoder, RgbImage};

/// Every format the decoder accepts.
pub const FORMATS: [image::ImageFormat; 5] = [
    image::ImageFormat::Jpeg,
    image::ImageFormat::Png,
    image::ImageFormat::Gif,
    image::ImageFormat::WebP,
    image::ImageFormat::Bmp,
];

/// A photo-like test picture: smooth gradients and a few hard edges, so that a cut shows.
pub fn picture(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        let stripe = if (x / 37 + y / 53) % 2 == 0 { 60 } else { 0 };
        image::Rgb([
            (x * 255 / width) as u8,
            (y * 255 / height) as u8,
            (128 + stripe) as u8,
        ])
    })
}

/// `image` encoded in `format` (JPEG at quality 92).
pub fn encode(image: &RgbImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    if format == image::ImageFormat::Jpeg {
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 92)
            .write_image(
                image.as_raw(),
                image.width(),
                image.height(),
                image::ExtendedColorType::Rgb8,
            )
            .expect("encode a JPEG");
    } else {
        image.write_to(&mut out, format).expect("encode a picture");
    }
    out.into_inner()
}
