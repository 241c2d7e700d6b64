//! Reading a search upload: multipart fields with size caps, box and `k` parsing, and image type
//! detection from the bytes themselves (never from the file name or the declared type).

use actix_multipart::Multipart;
use actix_web::http::StatusCode;
use futures_util::StreamExt as _;

use crate::backend::CropBox;
use crate::error::StoreError;

/// Request limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted image upload, in bytes.
    pub max_upload_bytes: usize,
    /// Largest accepted decoded image, in pixels (width × height).
    pub max_pixels: u64,
    /// Largest `k` a search may ask for.
    pub max_k: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_upload_bytes: 10 * 1024 * 1024,
            max_pixels: 40_000_000,
            max_k: 100,
        }
    }
}

/// Text fields are short; anything longer is refused rather than buffered.
const MAX_TEXT_FIELD_BYTES: usize = 1024;
/// A form has a handful of fields; more is abuse.
const MAX_FIELDS: usize = 16;

/// The fields of a search form, as sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SearchForm {
    /// The `image` field's bytes.
    pub image: Option<Vec<u8>>,
    /// The `bbox` field, parsed.
    pub bbox: Option<CropBox>,
    /// The `k` field, parsed (not yet range-checked).
    pub k: Option<usize>,
    /// The `category` field (empty means none).
    pub category: Option<String>,
    /// The `metric` field (empty means none).
    pub metric: Option<String>,
}

/// Reads a multipart search form, refusing oversized or malformed bodies with a 4xx.
pub async fn read_search_form(
    mut multipart: Multipart,
    limits: &Limits,
) -> Result<SearchForm, StoreError> {
    let mut form = SearchForm::default();
    let mut fields = 0usize;
    while let Some(field) = multipart.next().await {
        let mut field =
            field.map_err(|e| StoreError::bad_request(format!("bad multipart body: {e}")))?;
        fields += 1;
        if fields > MAX_FIELDS {
            return Err(StoreError::bad_request(format!(
                "too many form fields (at most {MAX_FIELDS})"
            )));
        }
        let name = field.name().unwrap_or_default().to_string();
        let cap = if name == "image" {
            limits.max_upload_bytes
        } else {
            MAX_TEXT_FIELD_BYTES
        };
        let mut data = Vec::new();
        let mut received = 0usize;
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(|e| {
                StoreError::bad_request(format!("bad multipart body in field {name:?}: {e}"))
            })?;
            received += chunk.len();
            // A client that sends a little too much still gets to finish sending and read the
            // 413 (closing on it mid-upload would look like a network failure); far too much
            // is cut off at once.
            if received > cap && received <= cap.saturating_mul(2) {
                continue;
            }
            if received > cap {
                return Err(too_long(&name, limits));
            }
            data.extend_from_slice(&chunk);
        }
        if received > cap {
            return Err(too_long(&name, limits));
        }
        match name.as_str() {
            "image" => form.image = Some(data),
            "bbox" => form.bbox = parse_bbox(&text(&name, data)?)?,
            "k" => form.k = parse_k(&text(&name, data)?)?,
            "category" => form.category = non_empty(text(&name, data)?),
            "metric" => form.metric = non_empty(text(&name, data)?),
            // Unknown fields are ignored, as HTML forms may carry extra inputs.
            _ => {}
        }
    }
    Ok(form)
}

fn too_long(name: &str, limits: &Limits) -> StoreError {
    if name == "image" {
        StoreError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "the image is larger than the {} byte limit",
                limits.max_upload_bytes
            ),
        )
    } else {
        StoreError::bad_request(format!(
            "field {name:?} is longer than {MAX_TEXT_FIELD_BYTES} bytes"
        ))
    }
}

fn text(name: &str, data: Vec<u8>) -> Result<String, StoreError> {
    String::from_utf8(data)
        .map(|s| s.trim().to_string())
        .map_err(|_| StoreError::bad_request(format!("field {name:?} is not UTF-8 text")))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

/// Parses `k`; empty means "use the default".
pub fn parse_k(s: &str) -> Result<Option<usize>, StoreError> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<usize>()
        .map(Some)
        .map_err(|_| StoreError::bad_request(format!("k must be a whole number, got {s:?}")))
}

/// Checks that `k` is in `1..=max_k`.
pub fn check_k(k: usize, max_k: usize) -> Result<usize, StoreError> {
    if k == 0 || k > max_k {
        return Err(StoreError::bad_request(format!(
            "k must be between 1 and {max_k}, got {k}"
        )));
    }
    Ok(k)
}

/// Parses a box given as `left,top,width,height` or as a JSON object with those keys; empty
/// means "no box". Width and height must be positive.
pub fn parse_bbox(s: &str) -> Result<Option<CropBox>, StoreError> {
    if s.is_empty() {
        return Ok(None);
    }
    let bad = || {
        StoreError::bad_request(format!(
            "bbox must be \"left,top,width,height\" in whole pixels or a JSON object with those keys, got {s:?}"
        ))
    };
    let bbox = if s.starts_with('{') {
        serde_json::from_str::<CropBox>(s).map_err(|_| bad())?
    } else {
        let parts: Vec<u32> = s
            .split(',')
            .map(|p| p.trim().parse::<f64>())
            .map(|v| match v {
                Ok(v) if v.is_finite() && v >= 0.0 && v <= f64::from(u32::MAX) => {
                    Ok(v.round() as u32)
                }
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()?;
        match parts[..] {
            [left, top, width, height] => CropBox {
                left,
                top,
                width,
                height,
            },
            _ => return Err(bad()),
        }
    };
    if bbox.width == 0 || bbox.height == 0 {
        return Err(StoreError::bad_request(format!(
            "bbox must have a positive width and height, got {}x{}",
            bbox.width, bbox.height
        )));
    }
    Ok(Some(bbox))
}

/// The MIME type of an image from its first bytes, for the formats the decoder accepts.
pub fn sniff_image_type(bytes: &[u8]) -> Option<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some("image/jpeg")
    } else if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if bytes.starts_with(b"GIF87a") || bytes.starts_with(b"GIF89a") {
        Some("image/gif")
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        Some("image/webp")
    } else if bytes.starts_with(b"BM") && bytes.len() >= 26 {
        Some("image/bmp")
    } else {
        None
    }
}

/// A catalogue id from a URL segment: canonical decimal digits only.
pub(crate) fn parse_id(s: &str, what: &str) -> Result<u64, StoreError> {
    s.parse::<u64>()
        .map_err(|_| StoreError::not_found(format!("{what} ids are whole numbers, got {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_parse_from_csv_and_json() {
        let expected = CropBox {
            left: 1,
            top: 2,
            width: 30,
            height: 40,
        };
        assert_eq!(parse_bbox("1,2,30,40").unwrap(), Some(expected));
        assert_eq!(parse_bbox(" 1, 2, 29.6, 40 ").unwrap(), Some(expected));
        assert_eq!(
            parse_bbox(r#"{"left":1,"top":2,"width":30,"height":40}"#).unwrap(),
            Some(expected)
        );
        assert_eq!(parse_bbox("").unwrap(), None);
    }

    #[test]
    fn bad_boxes_are_client_errors() {
        for bad in [
            "1,2,3",
            "a,b,c,d",
            "-1,0,5,5",
            "0,0,0,5",
            "1,2,3,4,5",
            "{\"left\":1}",
            "nan,0,1,1",
        ] {
            let err = parse_bbox(bad).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
        }
    }

    #[test]
    fn k_must_be_in_range() {
        assert_eq!(parse_k("12").unwrap(), Some(12));
        assert_eq!(parse_k("").unwrap(), None);
        assert!(parse_k("-3").is_err());
        assert!(check_k(0, 100).is_err());
        assert!(check_k(10_000, 100).is_err());
        assert_eq!(check_k(100, 100).unwrap(), 100);
    }

    #[test]
    fn image_types_come_from_magic_bytes() {
        assert_eq!(
            sniff_image_type(&[0xFF, 0xD8, 0xFF, 0xE0]),
            Some("image/jpeg")
        );
        assert_eq!(
            sniff_image_type(b"\x89PNG\r\n\x1a\n...."),
            Some("image/png")
        );
        assert_eq!(
            sniff_image_type(b"RIFF\0\0\0\0WEBPVP8 "),
            Some("image/webp")
        );
        assert_eq!(sniff_image_type(b"GIF89a"), Some("image/gif"));
        assert_eq!(sniff_image_type(b"<html><body>hi</body></html>"), None);
        assert_eq!(sniff_image_type(b""), None);
    }
}
