//! Server-rendered pages (minijinja templates, auto-escaped), static assets and catalogue photos.

use std::sync::LazyLock;

use actix_multipart::Multipart;
use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpResponse};
use base64::Engine as _;
use minijinja::{context, Environment};
use serde::Deserialize;

use crate::backend::SearchQuery;
use crate::error::{PageError, StoreError};
use crate::server::AppState;
use crate::upload::{read_search_form, sniff_image_type};

/// Results shown on the results page.
pub const RESULTS_ON_PAGE: usize = 12;
/// Similar products shown on a product page.
pub const SIMILAR_ON_PAGE: usize = 12;
/// Products per catalogue page.
pub const CATALOGUE_PAGE_SIZE: usize = 24;

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // Names end in .html, so minijinja escapes every value for HTML unless marked safe.
    for (name, source) in [
        ("base.html", include_str!("../templates/base.html")),
        ("home.html", include_str!("../templates/home.html")),
        ("results.html", include_str!("../templates/results.html")),
        ("product.html", include_str!("../templates/product.html")),
        (
            "catalogue.html",
            include_str!("../templates/catalogue.html"),
        ),
        ("error.html", include_str!("../templates/error.html")),
    ] {
        if let Err(e) = env.add_template(name, source) {
            // The templates are compiled into the binary; a syntax error is a build defect
            // that the page tests catch, and rendering reports it per request.
            tracing::error!(template = name, error = %e, "template does not parse");
        }
    }
    env
});

const STORE_JS: &str = include_str!("../static/store.js");
const STORE_CSS: &str = include_str!("../static/store.css");

pub(crate) fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(home))
        .route("/search", web::post().to(search))
        .route("/products/{category}/{product}", web::get().to(product))
        .route("/catalogue", web::get().to(catalogue_index))
        .route("/catalogue/{category}", web::get().to(catalogue))
        .route("/photos/{photo}", web::get().to(photo))
        .route("/static/{file}", web::get().to(asset));
}

fn render(name: &str, ctx: minijinja::Value) -> Result<String, StoreError> {
    TEMPLATES
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| {
            tracing::error!(template = name, error = %e, "template failed");
            StoreError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("page {name} could not be rendered"),
            )
        })
}

fn html(body: String) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(body)
}

/// The friendly error page for `err`.
pub(crate) fn render_error(err: &StoreError) -> String {
    let title = match err.status.as_u16() {
        404 => "We could not find that",
        413 => "That photo is too large",
        415 | 422 => "We could not read that photo",
        503 => "We are busy right now",
        400..=499 => "Something is wrong with the request",
        _ => "Something went wrong on our side",
    };
    render(
        "error.html",
        context! { title => title, detail => err.detail, status => err.status.as_u16() },
    )
    .unwrap_or_else(|_| {
        // Last resort when the error template itself fails: plain text needs no escaping
        // beyond what we do here.
        format!(
            "<!doctype html><title>Error</title><p>{}</p>",
            err.detail
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        )
    })
}

async fn home(state: web::Data<AppState>) -> Result<HttpResponse, PageError> {
    let backend = state.readiness.backend();
    let categories = backend.as_ref().map(|b| b.categories()).unwrap_or_default();
    Ok(html(render(
        "home.html",
        context! {
            categories => categories,
            ready => backend.is_some(),
            phase => state.readiness.phase(),
        },
    )?))
}

async fn search(
    state: web::Data<AppState>,
    multipart: Multipart,
) -> Result<HttpResponse, PageError> {
    let form = read_search_form(multipart, &state.limits).await?;
    let query = SearchQuery {
        image: form.image.unwrap_or_default(),
        bbox: form.bbox,
        k: form.k.unwrap_or(RESULTS_ON_PAGE),
        category: form.category.clone(),
        metric: form.metric,
        want_crop: true,
    };
    let outcome = state.search(query).await?;
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
    let (similar, similar_error) = match state.similar(category, id, SIMILAR_ON_PAGE).await {
        Ok(hits) => (hits, None),
        Err(e) if e.status == StatusCode::SERVICE_UNAVAILABLE => (
            Vec::new(),
            Some("Similar products are not available right now; reload in a moment."),
        ),
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

/// The catalogue page query.
#[derive(Debug, Deserialize)]
struct PageQuery {
    page: Option<usize>,
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
    let page = query.page.unwrap_or(1).max(1);
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

pub(crate) fn parse_id(s: &str, what: &str) -> Result<u64, StoreError> {
    s.parse::<u64>()
        .map_err(|_| StoreError::not_found(format!("{what} ids are whole numbers, got {s:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_parses() {
        for name in [
            "base.html",
            "home.html",
            "results.html",
            "product.html",
            "catalogue.html",
            "error.html",
        ] {
            assert!(TEMPLATES.get_template(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn metadata_is_html_escaped() {
        let err = StoreError::not_found("<script>alert(1)</script> & \"quotes\"");
        let page = render_error(&err);
        assert!(!page.contains("<script>alert"), "{page}");
        assert!(
            page.contains("&lt;script&gt;alert(1)&lt;&#x2f;script&gt;"),
            "{page}"
        );
    }

    #[test]
    fn result_cards_escape_names_and_link_by_id() {
        let hits = vec![crate::Hit {
            category: "tops".into(),
            product: 7,
            photo: 70,
            score: 0.91234,
            name: "<b>Bold</b> top".into(),
        }];
        let page = render(
            "results.html",
            context! { hits => hits, crop_base64 => "AAAA", category => "tops", took_ms => "12" },
        )
        .unwrap();
        assert!(page.contains("&lt;b&gt;Bold&lt;&#x2f;b&gt; top"), "{page}");
        assert!(page.contains("href=\"/products/tops/7\""));
        assert!(page.contains("src=\"/photos/70\""));
        assert!(page.contains("0.912"));
        assert_eq!(page.matches("result-card").count(), 1);
    }
}
