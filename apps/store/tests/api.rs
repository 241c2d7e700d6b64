//! API integration tests against a real server on a loopback port, over an index of s2s-dev
//! shop photos (categories in `common::TEST_CATEGORIES`).

mod common;

use common::{get, photo_bytes, products_of, records, search, store, truth, TEST_CATEGORIES};

#[test]
fn catalogue_photos_return_their_own_product_first() {
    let Some(store) = store() else { return };
    let kinds = truth(&store.data);
    let mut checked = 0;
    for category in TEST_CATEGORIES {
        let originals: Vec<_> = records(&store.data, "retrieval", category)
            .into_iter()
            .filter(|r| kinds.get(&r.photo).map(String::as_str) == Some("shop_original"))
            .take(4)
            .collect();
        for record in originals {
            let answer = search(store, &[("image", &photo_bytes(&store.data, record.photo))]);
            assert_eq!(answer.status, 200, "{}", answer.text());
            let json = answer.json();
            let top = &products_of(&json)[0];
            assert_eq!(
                (top.0.as_str(), top.1),
                (category, record.product),
                "photo {}",
                record.photo
            );
            assert_eq!(json["results"][0]["photo"], record.photo);
            assert_eq!(json["results"].as_array().unwrap().len(), 12);
            checked += 1;
        }
    }
    assert!(checked >= 15, "only {checked} catalogue photos checked");
}

#[test]
fn street_photos_with_their_box_find_their_product_in_the_top_12() {
    let Some(store) = store() else { return };
    let (mut found, mut total) = (0, 0);
    for category in TEST_CATEGORIES {
        for pair in records(&store.data, "test_pairs", category) {
            let bbox = pair.bbox.expect("pairs have boxes").field();
            let answer = search(
                store,
                &[
                    ("image", &photo_bytes(&store.data, pair.photo)),
                    ("bbox", bbox.as_bytes()),
                ],
            );
            assert_eq!(answer.status, 200, "{}", answer.text());
            let products = products_of(&answer.json());
            total += 1;
            if products.contains(&(category.to_string(), pair.product)) {
                found += 1;
            }
        }
    }
    let rate = found as f64 / total as f64;
    eprintln!(
        "street-to-shop: {found}/{total} test pairs ({:.1} %) have their product in the top 12 \
         (categories {}, no category filter)",
        rate * 100.0,
        TEST_CATEGORIES.join(", ")
    );
    assert!(total >= 50, "only {total} pairs");
    assert!(rate > 0.5, "only {found}/{total} pairs found");
}

#[test]
fn a_box_changes_the_result() {
    let Some(store) = store() else { return };
    let pair = records(&store.data, "test_pairs", "bags")[0].clone();
    let image = photo_bytes(&store.data, pair.photo);
    let bbox = pair.bbox.unwrap().field();
    let whole = products_of(&search(store, &[("image", &image)]).json());
    let boxed = products_of(&search(store, &[("image", &image), ("bbox", bbox.as_bytes())]).json());
    assert_eq!(whole.len(), 12);
    assert_eq!(boxed.len(), 12);
    assert_ne!(whole, boxed, "the box made no difference");
}

#[test]
fn category_filter_and_k_are_honoured() {
    let Some(store) = store() else { return };
    let pair = records(&store.data, "test_pairs", "belts")[0].clone();
    let image = photo_bytes(&store.data, pair.photo);
    let answer = search(
        store,
        &[("image", &image), ("category", b"hats"), ("k", b"5")],
    );
    assert_eq!(answer.status, 200, "{}", answer.text());
    let json = answer.json();
    let products = products_of(&json);
    assert_eq!(products.len(), 5);
    assert!(products.iter().all(|(c, _)| c == "hats"), "{products:?}");
    let scores: Vec<f64> = json["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["score"].as_f64().unwrap())
        .collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "{scores:?}");
    assert!(json["model"].as_str().unwrap().contains("mobilenet_v2"));
    assert!(json["took_ms"].as_f64().unwrap() > 0.0);
    let url = json["results"][0]["image_url"].as_str().unwrap();
    let photo = get(&store.url(url));
    assert_eq!(photo.status, 200);
    assert_eq!(photo.header("content-type"), Some("image/jpeg"));
}

/// A PNG whose header claims 60000 x 60000 pixels, in a few dozen bytes.
fn decompression_bomb() -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut typed = kind.to_vec();
        typed.extend_from_slice(data);
        out.extend_from_slice(&typed);
        out.extend_from_slice(&crc32(&typed).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut header = Vec::new();
    header.extend_from_slice(&60_000u32.to_be_bytes());
    header.extend_from_slice(&60_000u32.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &header);
    // A zlib stream of a few zero bytes: a real bomb would inflate to gigabytes.
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x63, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

#[test]
fn bad_inputs_are_4xx_with_a_message_and_the_server_stays_up() {
    let Some(store) = store() else { return };
    let photo = photo_bytes(
        &store.data,
        records(&store.data, "retrieval", "bags")[0].photo,
    );
    let mut over_cap = vec![0xFF, 0xD8, 0xFF, 0xE0];
    over_cap.resize(10 * 1024 * 1024 + 1024, 0);
    let (content_type, full) = common::multipart(&[("image", &photo)]);
    let truncated = &full[..full.len() / 2];
    let cases: Vec<(&str, common::Answer, u16)> = vec![
        (
            "not an image",
            search(store, &[("image", b"<html>hello</html>")]),
            415,
        ),
        (
            "truncated jpeg",
            search(store, &[("image", &photo[..200])]),
            422,
        ),
        ("no image field", search(store, &[("k", b"3")]), 400),
        (
            "over the size cap",
            search(store, &[("image", &over_cap)]),
            413,
        ),
        (
            "decompression bomb",
            search(store, &[("image", &decompression_bomb())]),
            413,
        ),
        (
            "box outside the image",
            search(store, &[("image", &photo), ("bbox", b"5000,5000,10,10")]),
            400,
        ),
        (
            "malformed box",
            search(store, &[("image", &photo), ("bbox", b"1,2,three")]),
            400,
        ),
        (
            "k = 0",
            search(store, &[("image", &photo), ("k", b"0")]),
            400,
        ),
        (
            "k = 10000",
            search(store, &[("image", &photo), ("k", b"10000")]),
            400,
        ),
        (
            "unknown category",
            search(store, &[("image", &photo), ("category", b"socks")]),
            400,
        ),
        (
            "unknown metric",
            search(store, &[("image", &photo), ("metric", b"hamming")]),
            400,
        ),
        (
            "truncated multipart",
            common::post(&store.url("/api/v1/search"), &content_type, truncated),
            400,
        ),
        (
            "not multipart",
            common::post(&store.url("/api/v1/search"), "application/json", b"{}"),
            400,
        ),
        (
            "unknown product",
            get(&store.url("/api/v1/products/bags/999999999")),
            404,
        ),
        (
            "unknown category product",
            get(&store.url("/api/v1/products/socks/1")),
            404,
        ),
        (
            "non-numeric product",
            get(&store.url("/api/v1/products/bags/abc")),
            404,
        ),
        (
            "unknown similar",
            get(&store.url("/api/v1/products/bags/999999999/similar")),
            404,
        ),
        ("unknown route", get(&store.url("/api/v1/nothing")), 404),
    ];
    for (what, answer, status) in cases {
        assert_eq!(answer.status, status, "{what}: {}", answer.text());
        assert_eq!(
            answer.header("content-type"),
            Some("application/json"),
            "{what}"
        );
        let json = answer.json();
        assert!(
            json["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what}: {json}"
        );
        assert!(
            json["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: {json}"
        );
        assert_eq!(get(&store.url("/healthz")).status, 200, "down after {what}");
    }
    // And it still answers searches.
    assert_eq!(search(store, &[("image", &photo)]).status, 200);
}

#[test]
fn concurrent_searches_get_their_own_results() {
    let Some(store) = store() else { return };
    let kinds = truth(&store.data);
    let pick = |category: &str| {
        records(&store.data, "retrieval", category)
            .into_iter()
            .find(|r| kinds.get(&r.photo).map(String::as_str) == Some("shop_original"))
            .unwrap()
    };
    let (a, b) = (pick("bags"), pick("eyewear"));
    let threads: Vec<_> = [(a, "bags"), (b, "eyewear")]
        .into_iter()
        .map(|(record, category)| {
            let image = photo_bytes(&store.data, record.photo);
            std::thread::spawn(move || {
                for _ in 0..6 {
                    let answer = search(store, &[("image", &image)]);
                    assert_eq!(answer.status, 200);
                    let top = products_of(&answer.json())[0].clone();
                    assert_eq!(top, (category.to_string(), record.product));
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().expect("a search thread failed");
    }
}

#[test]
fn product_and_similar_endpoints() {
    let Some(store) = store() else { return };
    let record = records(&store.data, "retrieval", "belts")[0].clone();
    let product = get(&store.url(&format!("/api/v1/products/belts/{}", record.product)));
    assert_eq!(product.status, 200, "{}", product.text());
    let json = product.json();
    assert_eq!(json["product"], record.product);
    assert!(json["photos"]
        .as_array()
        .unwrap()
        .contains(&record.photo.into()));
    assert!(!json["name"].as_str().unwrap().is_empty());

    let similar = get(&store.url(&format!(
        "/api/v1/products/belts/{}/similar?k=7",
        record.product
    )));
    assert_eq!(similar.status, 200, "{}", similar.text());
    let products = products_of(&similar.json());
    assert_eq!(products.len(), 7);
    assert!(!products.contains(&("belts".to_string(), record.product)));
    let bad_k = get(&store.url(&format!(
        "/api/v1/products/belts/{}/similar?k=0",
        record.product
    )));
    assert_eq!(bad_k.status, 400);
    let not_number = get(&store.url(&format!(
        "/api/v1/products/belts/{}/similar?k=many",
        record.product
    )));
    assert_eq!(not_number.status, 400);
    assert_eq!(not_number.header("content-type"), Some("application/json"));
}

#[test]
fn health_readiness_metrics_and_openapi() {
    let Some(store) = store() else { return };
    assert_eq!(get(&store.url("/healthz")).status, 200);
    let ready = get(&store.url("/readyz"));
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["status"], "ready");
    let photo = photo_bytes(
        &store.data,
        records(&store.data, "retrieval", "hats")[0].photo,
    );
    assert_eq!(search(store, &[("image", &photo)]).status, 200);
    let metrics = get(&store.url("/metrics")).text();
    for needle in [
        "wtb_http_requests_total{method=\"POST\",route=\"/api/v1/search\",status=\"200\"}",
        "wtb_http_request_duration_seconds_bucket{route=\"/api/v1/search\"",
        "wtb_inference_duration_seconds_count",
        "wtb_queue_depth",
    ] {
        assert!(
            metrics.contains(needle),
            "{needle} missing from:\n{metrics}"
        );
    }
    let openapi = get(&store.url("/api/v1/openapi.json")).json();
    assert_eq!(openapi["openapi"], "3.0.3");
    assert!(openapi["paths"]["/api/v1/search"]["post"].is_object());
}

#[test]
fn security_headers_and_photos_by_id_only() {
    let Some(store) = store() else { return };
    let home = get(&store.url("/"));
    assert_eq!(home.status, 200);
    assert_eq!(home.header("x-content-type-options"), Some("nosniff"));
    let csp = home.header("content-security-policy").unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    let html = home.text();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "external asset in {html}"
    );
    for path in [
        "/photos/..%2F..%2Fetc%2Fpasswd",
        "/photos/1",
        "/photos/-5",
        "/static/..%2FCargo.toml",
        "/static/store.jsx",
    ] {
        let answer = get(&store.url(path));
        assert_eq!(answer.status, 404, "{path}");
        assert_eq!(answer.header("x-content-type-options"), Some("nosniff"));
    }
    assert_eq!(get(&store.url("/static/store.js")).status, 200);
    assert_eq!(get(&store.url("/static/store.css")).status, 200);
}

#[test]
fn pages_render_results_products_and_catalogue() {
    let Some(store) = store() else { return };
    let pair = records(&store.data, "test_pairs", "eyewear")[0].clone();
    let bbox = pair.bbox.unwrap().field();
    let image = photo_bytes(&store.data, pair.photo);
    let (content_type, body) = common::multipart(&[
        ("image", &image),
        ("bbox", bbox.as_bytes()),
        ("category", b""),
    ]);
    let results = common::post(&store.url("/search"), &content_type, &body);
    assert_eq!(results.status, 200, "{}", results.text());
    let html = results.text();
    assert_eq!(html.matches("class=\"card result-card\"").count(), 12);
    assert!(html.contains("src=\"data:image/jpeg;base64,"));

    let product = get(&store.url(&format!("/products/eyewear/{}", pair.product)));
    assert_eq!(product.status, 200);
    assert!(product.text().contains("similar-card"));

    let first = get(&store.url("/catalogue/bags"));
    assert_eq!(first.status, 200);
    let page = first.text();
    assert_eq!(page.matches("class=\"card\"").count(), 24);
    assert!(page.contains("Page 1 of 9"), "{page}");
    let last = get(&store.url("/catalogue/bags?page=9")).text();
    assert_eq!(last.matches("class=\"card\"").count(), 198 - 8 * 24);
    assert_eq!(get(&store.url("/catalogue/bags?page=10")).status, 404);

    let missing = get(&store.url("/products/bags/999999999"));
    assert_eq!(missing.status, 404);
    assert!(missing
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(missing.text().contains("We could not find that"));
    let bad = common::post(&store.url("/search"), "text/plain", b"hello");
    assert_eq!(bad.status, 400);
    assert!(bad.text().contains("error-detail"));
}
