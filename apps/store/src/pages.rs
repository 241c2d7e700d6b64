//! Server-rendered pages (minijinja templates, auto-escaped), static assets and catalogue photos.

use actix_multipart::Multipart;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use base64::Engine as _;
use minijinja::context;
use serde::Deserialize;

use crate::backend::SearchQuery;
use crate::error::{PageError, StoreError};
use crate::render::render as render_template;
use crate::routing::{get, post};
use crate::state::client_of;
use crate::state::AppState;
use crate::upload::{parse_id, parse_page, sniff_image_type};

/// Results shown on the results page.
pub const RESULTS_ON_PAGE: usize = 12;
/// Similar products shown on a product page.
pub const SIMILAR_ON_PAGE: usize = 12;
/// Products per catalogue page.
pub const CATALOGUE_PAGE_SIZE: usize = 24;

const STORE_JS: &str = include_str!("../static/store.js");
const STORE_CSS: &str = include_str!("../static/store.css");

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(get("/", home))
        .service(post("/search", search))
        .service(get("/products/{category}/{product}", product))
        .service(get("/catalogue", catalogue_index))
        .service(get("/catalogue/{category}", catalogue))
        .service(get("/photos/{photo}", photo))
        .service(get("/static/{file}", asset));
}

/// Renders a page; a template failure is answered 500.
fn render(name: &str, ctx: minijinja::Value) -> Result<String, StoreError> {
    render_template(name, ctx).map_err(|e| {
        StoreError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("page {} could not be rendered", e.template),
        )
    })
}

fn html(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(body)
}

async fn home(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    let backend = state.readiness.backend();
    let categories = backend.as_ref().map(|b| b.categories()).unwrap_or_default();
    Ok(html(render(
        "home.html",
        context! {
            categories => categories,
            ready => backend.is_some(),
            demo => backend.as_ref().is_some_and(|b| b.is_demo()),
            phase => state.readiness.phase(),
        },
    )?))
}

async fn search(
    req: HttpRequest,
    state: web::Data<AppState>,
    multipart: Multipart,
) -> Result<HttpResponse, PageError> {
    let form = state.read_form(multipart).await?;
    let query = SearchQuery {
        image: form.image.unwrap_or_default(),
        bbox: form.bbox,
        k: form.k.unwrap_or(RESULTS_ON_PAGE),
        category: form.category.clone(),
        metric: form.metric,
        want_crop: true,
    };
    let outcome = state.search(query, client_of(&req)).await?;
    let crop = outcome
        .query_crop_jpeg
        .map(|jpeg| base64::engine::general_purpose::STANDARD.encode(jpeg));
    Ok(html(render(
        "results.html",
        context! {
            hits => outcome.hits,
            crop_base64 => crop,
            category => form.category,
            took_ms => format!("{:.0}", outcome.inference_ms),
        },
    )?))
}

async fn product(
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, PageError> {
    let (category, product) = path.into_inner();
    let backend = state.backend()?;
    let id = parse_id(&product, "product")?;
    let entry = backend.product(&category, id).ok_or_else(|| {
        StoreError::not_found(format!(
            "there is no product {product} in category {category:?}"
        ))
    })?;
    // The product page stays useful when the pool is busy: similar products are then omitted
    // with a note instead of failing the whole page.
    let (similar, similar_error) = match state
        .similar(category, id, SIMILAR_ON_PAGE, client_of(&req))
        .await
    {
        Ok(hits) => (hits, None),
        Err(e)
            if e.status == StatusCode::SERVICE_UNAVAILABLE
                || e.status == StatusCode::TOO_MANY_REQUESTS =>
        {
            (
                Vec::new(),
                Some("Similar products are not available right now; reload in a moment."),
            )
        }
        Err(e) => return Err(e.into()),
    };
    Ok(html(render(
        "product.html",
        context! { product => entry, similar => similar, similar_error => similar_error },
    )?))
}

async fn catalogue_index(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    let backend = state.backend()?;
    Ok(html(render(
        "catalogue.html",
        context! { categories => backend.categories(), category => None::<String> },
    )?))
}

/// The catalogue page query (the number is parsed by hand for a clear error page).
#[derive(Debug, Deserialize)]
struct PageQuery {
    page: Option<String>,
}

async fn catalogue(
    state: web::Data<AppState>,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, PageError> {
    let category = path.into_inner();
    let backend = state.backend()?;
    let categories = backend.categories();
    if !categories.iter().any(|c| c.name == category) {
        return Err(StoreError::not_found(format!("there is no category {category:?}")).into());
    }
    let page = parse_page(query.page.as_deref())?;
    let offset = (page - 1).saturating_mul(CATALOGUE_PAGE_SIZE);
    let (products, total) = backend.products(&category, offset, CATALOGUE_PAGE_SIZE);
    let pages = total.div_ceil(CATALOGUE_PAGE_SIZE).max(1);
    if page > pages {
        return Err(StoreError::not_found(format!(
            "category {category:?} has {pages} pages, not {page}"
        ))
        .into());
    }
    Ok(html(render(
        "catalogue.html",
        context! {
            categories => categories,
            category => category,
            products => products,
            page => page,
            pages => pages,
            total => total,
        },
    )?))
}

async fn photo(
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, PageError> {
    let id = parse_id(&path, "photo")?;
    let backend = state.backend()?;
    let bytes = backend
        .photo(id)
        .ok_or_else(|| StoreError::not_found(format!("there is no catalogue photo {id}")))?;
    let content_type = sniff_image_type(&bytes).ok_or_else(|| {
        StoreError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("catalogue photo {id} is not an image"),
        )
    })?;
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "public, max-age=3600"))
        .body(bytes))
}

async fn asset(path: web::Path<String>) -> Result<HttpResponse, PageError> {
    let (body, content_type) = match path.as_str() {
        "store.js" => (STORE_JS, "text/javascript; charset=utf-8"),
        "store.css" => (STORE_CSS, "text/css; charset=utf-8"),
        other => {
            return Err(StoreError::not_found(format!("there is no asset {other:?}")).into());
        }
    };
    Ok(HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "public, max-age=300"))
        .body(body))
}
