//! Robust photo decoding into RGB8.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, RgbImage};

use crate::crop::BBox;

use crate::ids::PhotoId;

/// Caps applied before a photo is decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted `width * height`, checked from the header before any pixel buffer is
    /// allocated (decompression-bomb guard). Default 50,000,000.
    pub max_pixels: u64,
    /// Largest accepted encoded file size in bytes. Default 64 MiB.
    pub max_file_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_pixels: 50_000_000,
            max_file_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Why a photo could not be turned into RGB8.
#[derive(Debug, thiserror::Error)]
pub enum PhotoProblem {
    /// The file does not exist.
    #[error("missing file")]
    Missing,
    /// The file exists but could not be read.
    #[error("cannot read: {0}")]
    Io(#[source] std::io::Error),
    /// The encoded file is larger than [`DecodeLimits::max_file_bytes`].
    #[error("file has {bytes} bytes, more than the limit of {max}")]
    FileTooLarge {
        /// Size of the file.
        bytes: u64,
        /// The limit.
        max: u64,
    },
    /// The header announces more pixels than [`DecodeLimits::max_pixels`].
    #[error("header claims {width}x{height} = {} pixels, more than the limit of {max}", *width as u64 * *height as u64)]
    TooManyPixels {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The limit.
        max: u64,
    },
    /// The header announces an empty image.
    #[error("image has zero width or height")]
    Empty,
    /// The bytes are not in a supported image format (JPEG, PNG, BMP, GIF, WebP).
    #[error("unknown or unsupported image format")]
    UnknownFormat,
    /// The decoder failed (corrupt or truncated data, unsupported variant).
    #[error("cannot decode: {0}")]
    Decode(#[source] image::ImageError),
    /// The JPEG data stops before its end-of-image marker: the file was cut short (decoders
    /// would fill the missing part with grey and only warn).
    #[error("the JPEG data ends before its end-of-image marker: the file is truncated")]
    Truncated,
}

/// A photo that could not be decoded, with the file it came from (`<memory>` for bytes).
#[derive(Debug, thiserror::Error)]
#[error("photo {}: {problem}", path.as_deref().map(|p| p.display().to_string()).unwrap_or_else(|| "<memory>".into()))]
pub struct PhotoError {
    /// The file, when the photo came from one.
    pub path: Option<PathBuf>,
    /// What went wrong.
    #[source]
    pub problem: PhotoProblem,
}

impl PhotoError {
    fn memory(problem: PhotoProblem) -> Self {
        PhotoError {
            path: None,
            problem,
        }
    }

    /// True when the file does not exist.
    pub fn is_missing(&self) -> bool {
        matches!(self.problem, PhotoProblem::Missing)
    }
}

/// The path of a photo in a photo folder: `<photos>/<photo>.jpg`.
pub fn photo_path(photos: &Path, photo: PhotoId) -> PathBuf {
    photos.join(format!("{}.jpg", photo.0))
}

/// Decodes an encoded photo into RGB8.
///
/// - The format is detected from the bytes, never from a name.
/// - The header is read first; a photo with more than `limits.max_pixels` pixels is refused
///   before its pixel buffer is allocated.
/// - Grayscale, CMYK (JPEG), 16-bit and alpha photos are converted to 8-bit RGB; alpha is
///   composited on white (shop photos are shot on white).
/// - The EXIF orientation, if any, is applied, so the result is upright.
pub fn decode_rgb(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, PhotoError> {
    decode_inner(bytes, limits).map_err(PhotoError::memory)
}

fn decode_inner(bytes: &[u8], limits: &DecodeLimits) -> Result<RgbImage, PhotoProblem> {
    let (_, orientation, decoder) = header_of(bytes, limits)?;
    decode_full(decoder, orientation)
}

/// Checks the caps and the header and returns the decoder, ready to decode the pixels.
fn open_decoder<'a>(
    bytes: &'a [u8],
    limits: &DecodeLimits,
) -> Result<Box<dyn ImageDecoder + 'a>, PhotoProblem> {
    if bytes.len() as u64 > limits.max_file_bytes {
        return Err(PhotoProblem::FileTooLarge {
            bytes: bytes.len() as u64,
            max: limits.max_file_bytes,
        });
    }
    let mut reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(PhotoProblem::Io)?;
    if reader.format().is_none() {
        return Err(PhotoProblem::UnknownFormat);
    }
    // A safety net in the decoders themselves: at most 16 bytes per pixel (RGBA f32) of the
    // accepted pixel count, plus slack for per-row buffers.
    let mut image_limits = image::Limits::default();
    image_limits.max_alloc = Some(
        limits
            .max_pixels
            .saturating_mul(16)
            .saturating_add(64 << 20),
    );
    reader.limits(image_limits);
    let is_jpeg = reader.format() == Some(ImageFormat::Jpeg);
    let decoder = reader.into_decoder().map_err(decode_problem)?;
    let (width, height) = decoder.dimensions();
    if width == 0 || height == 0 {
        return Err(PhotoProblem::Empty);
    }
    if width as u64 * height as u64 > limits.max_pixels {
        return Err(PhotoProblem::TooManyPixels {
            width,
            height,
            max: limits.max_pixels,
        });
    }
    if is_jpeg && !jpeg_is_complete(bytes) {
        return Err(PhotoProblem::Truncated);
    }
    Ok(Box::new(decoder))
}

fn decode_full(
    decoder: Box<dyn ImageDecoder + '_>,
    orientation: image::metadata::Orientation,
) -> Result<RgbImage, PhotoProblem> {
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_problem)?;
    image.apply_orientation(orientation);
    Ok(to_rgb8_on_white(image))
}

/// Whether a JPEG stream reaches an end-of-image marker after its first scan starts. The
/// marker segments before the scan are skipped by their lengths, so that an EXIF thumbnail's
/// own markers do not count; inside entropy-coded data a 0xFF byte is always followed by 0x00
/// or a restart marker, so the first FF D9 after the scan header is a real end of image.
fn jpeg_is_complete(bytes: &[u8]) -> bool {
    let mut at = 2;
    while at + 1 < bytes.len() {
        if bytes[at] != 0xFF {
            // Stray bytes between segments: libjpeg skips them with a warning, and so do we.
            at += 1;
            continue;
        }
        let marker = bytes[at + 1];
        match marker {
            0xFF => {
                at += 1;
                continue;
            }
            0xD9 => return true,
            0x01 | 0xD0..=0xD8 => {
                at += 2;
                continue;
            }
            _ => {}
        }
        let Some(&[high, low]) = bytes.get(at + 2..at + 4) else {
            return false;
        };
        let after = at + 2 + (usize::from(high) << 8 | usize::from(low));
        if marker == 0xDA {
            return bytes
                .get(after..)
                .is_some_and(|rest| rest.windows(2).any(|w| w == [0xFF, 0xD9]));
        }
        at = after;
    }
    false
}

/// A photo's header: what decoding it will cost, read without decoding any pixel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhotoHeader {
    /// Width as stored (before the EXIF orientation).
    pub width: u32,
    /// Height as stored.
    pub height: u32,
    /// Whether the format can be decoded at 1/2, 1/4 or 1/8 scale (JPEG).
    pub scalable: bool,
    /// Whether the EXIF orientation swaps width and height.
    pub transposed: bool,
}

impl PhotoHeader {
    /// Width and height once upright (after the EXIF orientation).
    pub fn upright(&self) -> (u32, u32) {
        if self.transposed {
            (self.height, self.width)
        } else {
            (self.width, self.height)
        }
    }

    /// The largest reduction (1, 2, 4 or 8) at which `region` of the upright photo (the
    /// whole photo when `None`) keeps at least `min_side` pixels on each side; always 1 for
    /// formats that cannot be decoded at reduced scale.
    pub fn reduction(&self, min_side: u32, region: Option<&BBox>) -> u32 {
        if !self.scalable || min_side == 0 {
            return 1;
        }
        let (width, height) = self.upright();
        let (region_width, region_height) = match region {
            Some(b) => {
                let w = (b.left + b.width).min(f64::from(width)) - b.left.max(0.0);
                let h = (b.top + b.height).min(f64::from(height)) - b.top.max(0.0);
                (w, h)
            }
            None => (f64::from(width), f64::from(height)),
        };
        let shorter = region_width.min(region_height);
        if !shorter.is_finite() {
            return 1;
        }
        [8, 4, 2]
            .into_iter()
            .find(|&d| shorter / f64::from(d) >= f64::from(min_side))
            .unwrap_or(1)
    }

    /// Pixels decoded at `reduction`.
    pub fn decoded_pixels(&self, reduction: u32) -> u64 {
        let d = u64::from(reduction.max(1));
        u64::from(self.width).div_ceil(d) * u64::from(self.height).div_ceil(d)
    }
}

/// Reads a photo's header, applying every check of [`decode_rgb`] that needs no pixel: the
/// caps, the format, the dimensions, and for JPEG whether the data is complete.
pub fn read_header(bytes: &[u8], limits: &DecodeLimits) -> Result<PhotoHeader, PhotoError> {
    header_of(bytes, limits)
        .map(|(header, _, _)| header)
        .map_err(PhotoError::memory)
}

fn header_of<'a>(
    bytes: &'a [u8],
    limits: &DecodeLimits,
) -> Result<
    (
        PhotoHeader,
        image::metadata::Orientation,
        Box<dyn ImageDecoder + 'a>,
    ),
    PhotoProblem,
> {
    let is_jpeg = bytes.starts_with(&[0xFF, 0xD8]);
    let mut decoder = open_decoder(bytes, limits)?;
    let (width, height) = decoder.dimensions();
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    use image::metadata::Orientation::*;
    let transposed = matches!(
        orientation,
        Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH
    );
    Ok((
        PhotoHeader {
            width,
            height,
            scalable: is_jpeg,
            transposed,
        },
        orientation,
        decoder,
    ))
}

/// Decodes a photo for a model that needs `min_side` pixels on each side of `region` (the
/// whole upright photo when `None`): a JPEG much larger than that is decoded at 1/2, 1/4 or
/// 1/8 scale in its DCT, which takes a fraction of the time and memory of a full decode.
/// Returns the image and the reduction applied (1 when none): boxes in the photo's pixels
/// are divided by it.
pub fn decode_rgb_reduced(
    bytes: &[u8],
    limits: &DecodeLimits,
    min_side: u32,
    region: Option<&BBox>,
) -> Result<(RgbImage, u32), PhotoError> {
    let (header, orientation, decoder) = header_of(bytes, limits).map_err(PhotoError::memory)?;
    let reduction = header.reduction(min_side, region);
    if reduction > 1 {
        drop(decoder);
        if let Some(image) = decode_jpeg_scaled(bytes, &header, reduction)? {
            let mut image = DynamicImage::ImageRgb8(image);
            image.apply_orientation(orientation);
            return Ok((image.into_rgb8(), reduction));
        }
        let decoder = open_decoder(bytes, limits).map_err(PhotoError::memory)?;
        return decode_full(decoder, orientation)
            .map(|image| (image, 1))
            .map_err(PhotoError::memory);
    }
    decode_full(decoder, orientation)
        .map(|image| (image, 1))
        .map_err(PhotoError::memory)
}

/// A JPEG decoded at `1/reduction` scale, or `None` for the colour models left to the full
/// decoder (CMYK, 16-bit grey).
fn decode_jpeg_scaled(
    bytes: &[u8],
    header: &PhotoHeader,
    reduction: u32,
) -> Result<Option<RgbImage>, PhotoError> {
    let problem = |e: jpeg_decoder::Error| {
        PhotoError::memory(PhotoProblem::Decode(image::ImageError::Decoding(
            image::error::DecodingError::new(ImageFormat::Jpeg.into(), e),
        )))
    };
    let mut decoder = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    let wanted = |side: u32| u16::try_from(side.div_ceil(reduction)).unwrap_or(u16::MAX);
    let (width, height) = decoder
        .scale(wanted(header.width), wanted(header.height))
        .map_err(problem)?;
    let pixels = decoder.decode().map_err(problem)?;
    let format = decoder.info().map(|info| info.pixel_format);
    let (width, height) = (u32::from(width), u32::from(height));
    let image = match format {
        Some(jpeg_decoder::PixelFormat::RGB24) => RgbImage::from_raw(width, height, pixels),
        Some(jpeg_decoder::PixelFormat::L8) => RgbImage::from_raw(
            width,
            height,
            pixels.iter().flat_map(|&l| [l, l, l]).collect(),
        ),
        _ => None,
    };
    Ok(image)
}

fn decode_problem(error: image::ImageError) -> PhotoProblem {
    match error {
        image::ImageError::Unsupported(_) => PhotoProblem::Decode(error),
        image::ImageError::IoError(io) => PhotoProblem::Io(io),
        other => PhotoProblem::Decode(other),
    }
}

/// Converts any decoded image to RGB8, compositing alpha on white.
fn to_rgb8_on_white(image: DynamicImage) -> RgbImage {
    if !image.color().has_alpha() {
        return image.into_rgb8();
    }
    let rgba = image.into_rgba8();
    let (width, height) = rgba.dimensions();
    let mut out = RgbImage::new(width, height);
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let a = src[3] as u32;
        for c in 0..3 {
            // round(v * a / 255 + 255 * (255 - a) / 255)
            let v = src[c] as u32 * a + 255 * (255 - a);
            dst[c] = ((v + 127) / 255) as u8;
        }
    }
    out
}

/// Reads and decodes a photo file into RGB8 (see [`decode_rgb`]); errors name the file.
pub fn load_rgb(path: &Path, limits: &DecodeLimits) -> Result<RgbImage, PhotoError> {
    let with_path = |problem| PhotoError {
        path: Some(path.to_path_buf()),
        problem,
    };
    let bytes = read_limited(path, limits).map_err(with_path)?;
    decode_inner(&bytes, limits).map_err(with_path)
}

/// Reads a file whole, refusing it without reading when it exceeds `max_file_bytes`.
pub(crate) fn read_limited(path: &Path, limits: &DecodeLimits) -> Result<Vec<u8>, PhotoProblem> {
    let metadata = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            PhotoProblem::Missing
        } else {
            PhotoProblem::Io(e)
        }
    })?;
    if metadata.len() > limits.max_file_bytes {
        return Err(PhotoProblem::FileTooLarge {
            bytes: metadata.len(),
            max: limits.max_file_bytes,
        });
    }
    std::fs::read(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            PhotoProblem::Missing
        } else {
            PhotoProblem::Io(e)
        }
    })
}
