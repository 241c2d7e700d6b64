//! Reading a search upload: multipart fields with size caps, box and `k` parsing, and image type
//! detection from the bytes themselves (never from the file name or the declared type).

use actix_multipart::Multipart;
use actix_web::http::StatusCode;
use futures_util::StreamExt as _;
use std::time::Duration;

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
    /// How long a request body may take to arrive, whole (a body trickled byte by byte is
    /// answered 408 when it runs out).
    pub body_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_upload_bytes: 10 * 1024 * 1024,
            max_pixels: 40_000_000,
            max_k: 100,
            body_timeout: Duration::from_secs(30),
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

/// Reads a multipart search form, refusing oversized or malformed bodies and forms without an
/// `image` field with a 4xx, and a body that takes longer than [`Limits::body_timeout`] to
/// arrive with 408.
pub async fn read_search_form(
    multipart: Multipart,
    limits: &Limits,
) -> Result<SearchForm, StoreError> {
    match actix_web::rt::time::timeout(limits.body_timeout, read_fields(multipart, limits)).await {
        Ok(form) => form,
        Err(_) => Err(StoreError::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            format!(
                "the request body did not arrive within {} s",
                limits.body_timeout.as_secs_f64()
            ),
        )),
    }
}

async fn read_fields(mut multipart: Multipart, limits: &Limits) -> Result<SearchForm, StoreError> {
    let mut form = SearchForm::default();
    let mut fields = 0usize;
    let mut other_fields: Vec<String> = Vec::new();
    while let Some(field) = multipart.next().await {
        let mut field = field.map_err(|e| StoreError::bad_request(multipart_problem(&e)))?;
        fields += 1;
        if fields > MAX_FIELDS {
            return Err(StoreError::bad_request(format!(
                "too many form fields (at most {MAX_FIELDS})"
            )));
        }
        let name = field.name().unwrap_or_default().to_string();
        let known = ["image", "bbox", "k", "category", "metric"].contains(&name.as_str());
        // Unknown fields (HTML forms may carry extra inputs; a file may come under the wrong
        // name) are read and dropped, up to the upload cap, so that the answer can say what is
        // missing.
        let cap = if name == "image" || !known {
            limits.max_upload_bytes
        } else {
            MAX_TEXT_FIELD_BYTES
        };
        let mut data = Vec::new();
        let mut received = 0usize;
        while let Some(chunk) = field.next().await {
            let chunk = chunk.map_err(|e| {
                StoreError::bad_request(format!("in field {name:?}: {}", multipart_problem(&e)))
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
            if known {
                data.extend_from_slice(&chunk);
            }
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
            _ => other_fields.push(name),
        }
    }
    if form.image.is_none() {
        let sent = if other_fields.is_empty() {
            String::new()
        } else {
            format!(
                " (the form has {}: {})",
                if other_fields.len() == 1 {
                    "a field named"
                } else {
                    "fields named"
                },
                other_fields
                    .iter()
                    .map(|n| format!("{n:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        return Err(StoreError::bad_request(format!(
            "the image field is missing{sent}: send the photo as a file field named \"image\""
        )));
    }
    Ok(form)
}

/// What is wrong with a multipart body, for a person (the parser's own texts are terse).
fn multipart_problem(error: &actix_multipart::MultipartError) -> String {
    use actix_multipart::MultipartError as E;
    let how = "send the photo as multipart/form-data with a file field named \"image\"";
    match error {
        E::ContentTypeMissing => format!("the request has no Content-Type: {how}"),
        E::ContentTypeParse => format!("the Content-Type header cannot be read: {how}"),
        E::ContentTypeIncompatible => format!("the body is not multipart/form-data: {how}"),
        E::BoundaryMissing => {
            "the multipart boundary is missing from the Content-Type header or the body".into()
        }
        E::Incomplete => "the multipart body ends early (a cut-off upload?)".into(),
        E::Nested => "nested multipart bodies are not supported".into(),
        E::ContentDispositionMissing | E::ContentDispositionNameMissing => {
            "a part of the multipart body has no form field name".into()
        }
        E::Payload(e) => format!("the body could not be read: {e}"),
        E::Parse(e) => format!("the multipart body is malformed: {e}"),
        other => format!("the multipart body is malformed: {other}"),
    }
}

fn too_long(name: &str, limits: &Limits) -> StoreError {
    if name != "bbox" && name != "k" && name != "category" && name != "metric" {
        StoreError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "field {name:?} is larger than the {} byte upload limit",
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

/// A catalogue id from a URL segment: canonical decimal digits only (no sign, no leading
/// zero), so that each resource has one address.
pub(crate) fn parse_id(s: &str, what: &str) -> Result<u64, StoreError> {
    let canonical =
        !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    let bad = || {
        StoreError::not_found(format!(
            "{what} ids are whole numbers written without sign or leading zeros, got {s:?}"
        ))
    };
    if !canonical {
        return Err(bad());
    }
    s.parse::<u64>().map_err(|_| bad())
}

/// A page number from a query string: empty means the first page.
pub(crate) fn parse_page(s: Option<&str>) -> Result<usize, StoreError> {
    match s.map(str::trim) {
        None | Some("") => Ok(1),
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|&page| page >= 1)
            .ok_or_else(|| {
                StoreError::bad_request(format!("page must be a whole number from 1 up, got {s:?}"))
            }),
    }
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
    fn ids_and_pages_are_canonical_numbers() {
        assert_eq!(parse_id("67", "photo").unwrap(), 67);
        assert_eq!(parse_id("0", "photo").unwrap(), 0);
        for bad in [
            "+67",
            "067",
            "-1",
            "",
            " 67",
            "6 7",
            "99999999999999999999999",
        ] {
            let err = parse_id(bad, "photo").unwrap_err();
            assert_eq!(err.status, StatusCode::NOT_FOUND, "{bad}");
        }
        assert_eq!(parse_page(None).unwrap(), 1);
        assert_eq!(parse_page(Some("3")).unwrap(), 3);
        for bad in ["-1", "abc", "0", "99999999999999999999"] {
            let err = parse_page(Some(bad)).unwrap_err();
            assert_eq!(err.status, StatusCode::BAD_REQUEST, "{bad}");
            assert!(err.detail.contains(bad), "{}", err.detail);
        }
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
