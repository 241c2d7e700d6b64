//! Resources that answer HEAD wherever they answer GET, and 405 with `Allow` for any other
//! method, in the error format of their route (JSON under `/api/`, a page elsewhere).

use actix_web::http::header::{self, HeaderValue};
use actix_web::http::StatusCode;
use actix_web::{
    guard, web, FromRequest, Handler, HttpRequest, HttpResponse, Resource, Responder, ResponseError,
};

use crate::error::{ApiError, PageError, StoreError};

/// A resource answering GET and HEAD with `handler`, and any other method with 405 and
/// `Allow: GET, HEAD`.
pub(crate) fn get<F, Args>(path: &str, handler: F) -> Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    web::resource(path)
        .route(
            web::route()
                .guard(guard::Any(guard::Get()).or(guard::Head()))
                .to(handler),
        )
        .default_service(web::to(|req: HttpRequest| async move {
            method_not_allowed(&req, "GET, HEAD")
        }))
}

/// A resource answering POST with `handler`, and any other method with 405 and `Allow: POST`.
pub(crate) fn post<F, Args>(path: &str, handler: F) -> Resource
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    web::resource(path)
        .route(web::post().to(handler))
        .default_service(web::to(|req: HttpRequest| async move {
            method_not_allowed(&req, "POST")
        }))
}

/// 405 naming the methods the resource allows, in the route's error format.
fn method_not_allowed(req: &HttpRequest, allow: &'static str) -> HttpResponse {
    let err = StoreError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} does not answer {}; it answers {allow}",
            req.path(),
            req.method()
        ),
    );
    let mut response = if req.path().starts_with("/api/") {
        ApiError::from(err).error_response()
    } else {
        PageError::from(err).error_response()
    };
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}
