//! Errors answered to clients: JSON `{error, detail}` on the API, a friendly page elsewhere.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};

use crate::backend::BackendError;
use crate::pool::PoolError;

/// Seconds a client is asked to wait when the store is busy or not ready yet.
pub const RETRY_AFTER_SECONDS: u32 = 2;

/// A failed request: its status, a short machine-readable code and a human explanation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError {
    /// The HTTP status.
    pub status: StatusCode,
    /// A short code such as `bad_image` or `not_found`.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub detail: String,
}

impl StoreError {
    /// An error with this status, code and detail.
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> StoreError {
        StoreError {
            status,
            code,
            detail: detail.into(),
        }
    }

    /// 400 with code `bad_request`.
    pub fn bad_request(detail: impl Into<String>) -> StoreError {
        StoreError::new(StatusCode::BAD_REQUEST, "bad_request", detail)
    }

    /// 404 with code `not_found`.
    pub fn not_found(detail: impl Into<String>) -> StoreError {
        StoreError::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    /// 503 with code `not_ready`, while the index is being loaded or built.
    pub fn not_ready(phase: &str) -> StoreError {
        StoreError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the store is starting: {phase}"),
        )
    }

    fn retry_after(&self) -> Option<u32> {
        (self.status == StatusCode::SERVICE_UNAVAILABLE).then_some(RETRY_AFTER_SECONDS)
    }
}

impl From<BackendError> for StoreError {
    fn from(err: BackendError) -> StoreError {
        match err {
            BackendError::BadImage(d) => {
                StoreError::new(StatusCode::UNPROCESSABLE_ENTITY, "bad_image", d)
            }
            BackendError::TooLarge(d) => {
                StoreError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", d)
            }
            BackendError::BadQuery(d) => StoreError::bad_request(d),
            BackendError::NotFound(d) => StoreError::not_found(d),
            BackendError::Internal(d) => {
                tracing::error!(detail = %d, "backend failure");
                StoreError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", d)
            }
        }
    }
}

impl From<PoolError> for StoreError {
    fn from(err: PoolError) -> StoreError {
        match err {
            PoolError::Busy { .. } => {
                StoreError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", err.to_string())
            }
            PoolError::Panicked(_) | PoolError::Closed => {
                tracing::error!(error = %err, "inference worker failure");
                StoreError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    err.to_string(),
                )
            }
        }
    }
}

/// A [`StoreError`] answered as JSON `{error, detail}` (API routes).
#[derive(Debug)]
pub struct ApiError(pub StoreError);

impl<E: Into<StoreError>> From<E> for ApiError {
    fn from(err: E) -> ApiError {
        ApiError(err.into())
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.code, self.0.detail)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.0.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.0.status);
        if let Some(seconds) = self.0.retry_after() {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response.json(serde_json::json!({ "error": self.0.code, "detail": self.0.detail }))
    }
}

/// A [`StoreError`] answered as a friendly HTML page (page routes).
#[derive(Debug)]
pub struct PageError(pub StoreError);

impl<E: Into<StoreError>> From<E> for PageError {
    fn from(err: E) -> PageError {
        PageError(err.into())
    }
}

impl std::fmt::Display for PageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0.code, self.0.detail)
    }
}

impl ResponseError for PageError {
    fn status_code(&self) -> StatusCode {
        self.0.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.0.status);
        if let Some(seconds) = self.0.retry_after() {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        response
            .content_type("text/html; charset=utf-8")
            .body(crate::pages::render_error(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_errors_map_to_client_and_server_statuses() {
        let cases = [
            (BackendError::BadImage("x".into()), 422),
            (BackendError::TooLarge("x".into()), 413),
            (BackendError::BadQuery("x".into()), 400),
            (BackendError::NotFound("x".into()), 404),
            (BackendError::Internal("x".into()), 500),
        ];
        for (err, status) in cases {
            assert_eq!(StoreError::from(err).status.as_u16(), status);
        }
        let busy = StoreError::from(PoolError::Busy {
            workers: 1,
            queued: 4,
        });
        assert_eq!(busy.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(busy.retry_after(), Some(RETRY_AFTER_SECONDS));
    }

    #[test]
    fn api_errors_are_json_with_retry_after_when_busy() {
        let response = ApiError(StoreError::from(PoolError::Busy {
            workers: 1,
            queued: 4,
        }))
        .error_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "2");
        assert_eq!(
            response.headers().get(header::CONTENT_TYPE).unwrap(),
            "application/json"
        );
    }
}
