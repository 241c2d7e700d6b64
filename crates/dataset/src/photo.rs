//! Robust photo decoding into RGB8.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use image::{DynamicImage, ImageDecoder, ImageReader, RgbImage};

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
    let mut decoder = reader.into_decoder().map_err(decode_problem)?;
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
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder).map_err(decode_problem)?;
    image.apply_orientation(orientation);
    Ok(to_rgb8_on_white(image))
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
