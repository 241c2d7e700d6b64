//! Page rendering: the shop's minijinja templates (auto-escaped HTML), compiled into the
//! binary, and the error page. Knows nothing of requests or state: handlers pass it plain
//! values.

use std::sync::LazyLock;

use minijinja::{context, Environment};

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

/// A template that failed to render (a defect of the build, logged with its cause).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RenderError {
    /// The template's name.
    pub(crate) template: String,
}

/// Renders template `name` with `ctx`.
pub(crate) fn render(name: &str, ctx: minijinja::Value) -> Result<String, RenderError> {
    TEMPLATES
        .get_template(name)
        .and_then(|t| t.render(ctx))
        .map_err(|e| {
            tracing::error!(template = name, error = %e, "template failed");
            RenderError {
                template: name.to_string(),
            }
        })
}

/// The friendly error page for an answer of `status` explained by `detail`.
pub(crate) fn error_page(status: u16, detail: &str) -> String {
    let title = match status {
        404 => "We could not find that",
        413 => "That photo is too large",
        415 | 422 => "We could not read that photo",
        503 => "We are busy right now",
        400..=499 => "Something is wrong with the request",
        _ => "Something went wrong on our side",
    };
    render(
        "error.html",
        context! { title => title, detail => detail, status => status },
    )
    .unwrap_or_else(|_| {
        // Last resort when the error template itself fails: plain text needs no escaping
        // beyond what we do here.
        format!(
            "<!doctype html><title>Error</title><p>{}</p>",
            detail
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        )
    })
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
        let page = error_page(404, "<script>alert(1)</script> & \"quotes\"");
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
