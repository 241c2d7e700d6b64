//! Errors answered to clients: JSON `{error, detail}` on the API, a friendly page elsewhere.

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};

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
        matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        )
        .then_some(RETRY_AFTER_SECONDS)
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
            PoolError::Expired { .. } => {
                StoreError::new(StatusCode::SERVICE_UNAVAILABLE, "busy", err.to_string())
            }
            PoolError::ClientBusy { .. } => StoreError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_requests",
                err.to_string(),
            ),
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

/// How a route answers an error: JSON for the API, an HTML page for the shop's pages.
pub trait ErrorFormat: std::fmt::Debug + 'static {
    /// Finishes `response` (status and headers already set) with the body for `err`.
    fn body(err: &StoreError, response: HttpResponseBuilder) -> HttpResponse;
}

/// JSON `{error, detail}` (API routes).
#[derive(Debug)]
pub struct Json;

impl ErrorFormat for Json {
    fn body(err: &StoreError, mut response: HttpResponseBuilder) -> HttpResponse {
        response.json(serde_json::json!({ "error": err.code, "detail": err.detail }))
    }
}

/// A friendly HTML page (page routes).
#[derive(Debug)]
pub struct Html;

impl ErrorFormat for Html {
    fn body(err: &StoreError, mut response: HttpResponseBuilder) -> HttpResponse {
        response
            .content_type("text/html; charset=utf-8")
            .body(crate::render::error_page(err.status.as_u16(), &err.detail))
    }
}

/// A [`StoreError`] with the format its route answers in.
#[derive(Debug)]
pub struct Answered<F: ErrorFormat> {
    /// The error.
    pub error: StoreError,
    format: std::marker::PhantomData<F>,
}

/// An error of an API route, answered as JSON.
pub type ApiError = Answered<Json>;
/// An error of a page route, answered as an HTML page.
pub type PageError = Answered<Html>;

impl<F: ErrorFormat, E: Into<StoreError>> From<E> for Answered<F> {
    fn from(err: E) -> Self {
        Answered {
            error: err.into(),
            format: std::marker::PhantomData,
        }
    }
}

impl<F: ErrorFormat> std::fmt::Display for Answered<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error.code, self.error.detail)
    }
}

impl<F: ErrorFormat> ResponseError for Answered<F> {
    fn status_code(&self) -> StatusCode {
        self.error.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.error.status);
        if let Some(seconds) = self.error.retry_after() {
            response.insert_header((header::RETRY_AFTER, seconds.to_string()));
        }
        F::body(&self.error, response)
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
        let response = ApiError::from(StoreError::from(PoolError::Busy {
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
