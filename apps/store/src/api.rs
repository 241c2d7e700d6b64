//! The JSON API, version 1, under `/api/v1`.

use std::time::Instant;

use actix_multipart::Multipart;
use actix_web::{web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};

use crate::backend::{Hit, SearchQuery};
use crate::error::{ApiError, StoreError};
use crate::routing::{get, post};
use crate::state::client_of;
use crate::state::AppState;
use crate::upload::parse_id;

/// Default number of results of the API searches.
pub const DEFAULT_K: usize = 12;

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/api/v1")
            .app_data(web::QueryConfig::default().error_handler(|err, _| {
                ApiError::from(StoreError::bad_request(format!("bad query string: {err}"))).into()
            }))
            .app_data(web::PathConfig::default().error_handler(|err, _| {
                ApiError::from(StoreError::not_found(format!("bad path: {err}"))).into()
            }))
            .service(post("/search", search))
            .service(get("/categories", categories))
            .service(get("/products/{category}/{product}", product))
            .service(get("/products/{category}/{product}/similar", similar))
            .service(get("/openapi.json", openapi)),
    );
}

/// One result of an API search.
#[derive(Debug, Serialize)]
struct ApiHit {
    category: String,
    product: u64,
    score: f32,
    photo: u64,
    image_url: String,
    name: String,
}

impl From<Hit> for ApiHit {
    fn from(hit: Hit) -> ApiHit {
        ApiHit {
            image_url: format!("/photos/{}", hit.photo),
            category: hit.category,
            product: hit.product,
            score: hit.score,
            photo: hit.photo,
            name: hit.name,
        }
    }
}

/// The answer of the search endpoints.
#[derive(Debug, Serialize)]
struct SearchAnswer {
    results: Vec<ApiHit>,
    took_ms: f64,
    model: String,
}

async fn search(
    req: HttpRequest,
    state: web::Data<AppState>,
    multipart: Multipart,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let form = state.read_form(multipart).await?;
    let backend = state.backend()?;
    let query = SearchQuery {
        image: form.image.unwrap_or_default(),
        bbox: form.bbox,
        k: form.k.unwrap_or(DEFAULT_K),
        category: form.category,
        metric: form.metric,
        want_crop: false,
    };
    let outcome = state.search(query, client_of(&req)).await?;
    Ok(HttpResponse::Ok().json(SearchAnswer {
        results: outcome.hits.into_iter().map(ApiHit::from).collect(),
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
        model: backend.model(),
    }))
}

async fn categories(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    let backend = state.backend()?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "categories": backend.categories() })))
}

async fn product(
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, ApiError> {
    let (category, product) = path.into_inner();
    let id = parse_id(&product, "product")?;
    let backend = state.backend()?;
    let entry = backend.product(&category, id).ok_or_else(|| {
        StoreError::not_found(format!(
            "there is no product {product} in category {category:?}"
        ))
    })?;
    let image_urls: Vec<String> = entry
        .photos
        .iter()
        .map(|p| format!("/photos/{p}"))
        .collect();
    let attributes: serde_json::Map<String, serde_json::Value> = entry
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "category": entry.category,
        "product": entry.product,
        "name": entry.name,
        "attributes": attributes,
        "photos": entry.photos,
        "image_urls": image_urls,
    })))
}

/// The query of the similar endpoint.
#[derive(Debug, Deserialize)]
struct SimilarQuery {
    k: Option<usize>,
}

async fn similar(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
    query: web::Query<SimilarQuery>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let (category, product) = path.into_inner();
    let id = parse_id(&product, "product")?;
    let backend = state.backend()?;
    if backend.product(&category, id).is_none() {
        return Err(StoreError::not_found(format!(
            "there is no product {product} in category {category:?}"
        ))
        .into());
    }
    let hits = state
        .similar(category, id, query.k.unwrap_or(DEFAULT_K), client_of(&req))
        .await?;
    Ok(HttpResponse::Ok().json(SearchAnswer {
        results: hits.into_iter().map(ApiHit::from).collect(),
        took_ms: started.elapsed().as_secs_f64() * 1000.0,
        model: backend.model(),
    }))
}

async fn openapi(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(crate::openapi::document(&state.limits))
}
