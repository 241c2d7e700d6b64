//! The store under bad input and abuse: broken uploads, wrong methods and parameters,
//! non-canonical addresses, slow bodies, bursts of expensive uploads and queue deadlines.
//! Each test reproduces one problem of issue 16 as it was found. Clients are told apart by
//! address, so abusive and well-behaved clients connect from distinct loopback addresses.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use common::{get, multipart, photo_bytes, records, search, store, Answer};
use wtb_store::{
    start, Backend, BackendError, CategoryCount, Hit, Limits, Product, Readiness, RunningStore,
    SearchOutcome, SearchQuery, StoreOptions,
};

/// Connects from `from` (a loopback address: a distinct client) to `to`.
fn connect_from(from: Ipv4Addr, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .expect("create a socket");
    socket
        .bind(&SocketAddr::from((from, 0)).into())
        .expect("bind a loopback address");
    socket.connect(&to.into()).expect("connect to the store");
    let stream: TcpStream = socket.into();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("set a read timeout");
    stream
}

/// Sends `request` whole and reads the answer to the end (the request says
/// `Connection: close`).
fn exchange(from: Ipv4Addr, to: SocketAddr, request: &[u8]) -> Answer {
    let mut stream = connect_from(from, to);
    stream.write_all(request).expect("send the request");
    read_answer(&mut stream)
}

fn read_answer(stream: &mut TcpStream) -> Answer {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {:?}", String::from_utf8_lossy(&raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

/// A multipart search request (`POST path`) with `Connection: close`.
fn search_request(path: &str, fields: &[(&str, &[u8])]) -> Vec<u8> {
    let (content_type, body) = multipart(fields);
    raw_post(path, &content_type, &body)
}

/// `POST path` with this body and `Connection: close`.
fn raw_post(path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn client(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

/// A shop photo of the test catalogue (a few kilobytes).
fn shop_photo(data: &std::path::Path) -> Vec<u8> {
    photo_bytes(data, records(data, "retrieval", "bags")[0].photo)
}

/// An all-black 6300 x 6300 PNG: 154 KB on the wire, 40 megapixels decoded, under the store's
/// 40-megapixel cap, and a PNG cannot be decoded at reduced scale.
fn black_png() -> &'static [u8] {
    static PNG: OnceLock<Vec<u8>> = OnceLock::new();
    PNG.get_or_init(|| {
        let side = 6300;
        let mut out = Vec::new();
        let encoder = image::codecs::png::PngEncoder::new_with_quality(
            std::io::Cursor::new(&mut out),
            image::codecs::png::CompressionType::Best,
            image::codecs::png::FilterType::NoFilter,
        );
        image::ImageEncoder::write_image(
            encoder,
            &vec![0u8; side * side * 3],
            side as u32,
            side as u32,
            image::ExtendedColorType::Rgb8,
        )
        .expect("encode the PNG");
        out
    })
}

#[test]
fn a_truncated_jpeg_is_refused_naming_the_problem() {
    let Some(store) = store() else { return };
    let photo = shop_photo(&store.data);
    assert!(photo.len() > 2000, "the photo is too small to cut");
    let cut = &photo[..1000];
    let api = search(store, &[("image", cut)]);
    assert_eq!(api.status, 422, "{}", api.text());
    assert_eq!(api.json()["error"], "bad_image");
    assert!(api.text().contains("truncated"), "{}", api.text());

    let page = exchange(
        client(1),
        store.addr,
        &search_request("/search", &[("image", cut)]),
    );
    assert_eq!(page.status, 422, "{}", page.text());
    assert!(page
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    assert!(page.text().contains("truncated"), "{}", page.text());
}

#[test]
fn a_burst_of_huge_uploads_does_not_starve_another_client() {
    let Some(store) = store() else { return };
    let png = black_png();
    let abusive: Vec<_> = (0..32)
        .map(|_| {
            let addr = store.addr;
            std::thread::spawn(move || {
                exchange(
                    client(2),
                    addr,
                    &search_request("/api/v1/search", &[("image", png)]),
                )
            })
        })
        .collect();
    // Let the burst arrive and queue, then a shopper searches.
    std::thread::sleep(Duration::from_millis(300));
    let photo = shop_photo(&store.data);
    let started = Instant::now();
    let shopper = exchange(
        client(3),
        store.addr,
        &search_request("/api/v1/search", &[("image", &photo)]),
    );
    let waited = started.elapsed();
    assert_eq!(shopper.status, 200, "{}", shopper.text());
    let statuses: Vec<u16> = abusive
        .into_iter()
        .map(|t| t.join().expect("an abusive client").status)
        .collect();
    let refused = statuses.iter().filter(|&&s| s == 429).count();
    eprintln!(
        "shopper answered in {:.0} ms beside a burst of 32 40-megapixel PNGs ({refused} refused \
         with 429, statuses {statuses:?})",
        waited.as_secs_f64() * 1000.0
    );
    assert!(
        statuses.iter().all(|s| [200, 429, 503].contains(s)),
        "{statuses:?}"
    );
    assert!(refused > 0, "the burst was admitted whole: {statuses:?}");
    // The shopper waits for at most the uploads already running, not the whole burst (which
    // takes several seconds of both workers).
    assert!(
        waited < Duration::from_millis(2500),
        "the shopper waited {waited:?}"
    );
}

#[test]
fn bad_page_numbers_get_the_html_error_page() {
    let Some(store) = store() else { return };
    for page in ["-1", "abc", "99999999999999999999", "0"] {
        let answer = get(&store.url(&format!("/catalogue/bags?page={page}")));
        assert_eq!(answer.status, 400, "page={page}: {}", answer.text());
        assert!(
            answer
                .header("content-type")
                .is_some_and(|t| t.starts_with("text/html")),
            "page={page}"
        );
        let text = answer.text();
        assert!(text.contains("<html"), "page={page}: {text}");
        assert!(text.contains("page must be a whole number"), "{text}");
        assert!(!text.contains("deserialize"), "{text}");
    }
    // A bad query string on another page route is an error page too.
    let answer = get(&store.url("/catalogue/bags?page=%FF"));
    assert!(
        answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("text/html")),
        "{}",
        answer.text()
    );
    assert_eq!(get(&store.url("/catalogue/bags?page=1")).status, 200);
}

#[test]
fn head_is_answered_wherever_get_is_and_wrong_methods_get_405() {
    let Some(store) = store() else { return };
    let photo = records(&store.data, "retrieval", "bags")[0].photo;
    for path in [
        "/".to_string(),
        "/healthz".to_string(),
        "/readyz".to_string(),
        format!("/photos/{photo}"),
        "/catalogue/bags".to_string(),
        "/api/v1/categories".to_string(),
    ] {
        let request = format!("HEAD {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        let answer = exchange(client(1), store.addr, request.as_bytes());
        assert_eq!(answer.status, 200, "HEAD {path}");
        assert!(answer.body.is_empty(), "HEAD {path} has a body");
    }
    let cases = [
        ("GET", "/search", "POST", "text/html"),
        ("PUT", "/api/v1/search", "POST", "application/json"),
        (
            "DELETE",
            "/api/v1/categories",
            "GET, HEAD",
            "application/json",
        ),
        ("POST", "/healthz", "GET, HEAD", "text/html"),
        ("POST", "/catalogue/bags", "GET, HEAD", "text/html"),
    ];
    for (method, path, allow, content_type) in cases {
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let answer = exchange(client(1), store.addr, request.as_bytes());
        assert_eq!(answer.status, 405, "{method} {path}: {}", answer.text());
        assert_eq!(answer.header("allow"), Some(allow), "{method} {path}");
        assert!(
            answer
                .header("content-type")
                .is_some_and(|t| t.starts_with(content_type)),
            "{method} {path}"
        );
    }
}

#[test]
fn a_file_under_another_field_name_is_told_the_image_field_is_missing() {
    let Some(store) = store() else { return };
    let photo = shop_photo(&store.data);
    let (content_type, mut body) = multipart(&[("k", b"3")]);
    // `curl -F photo=@x.jpg`: a file field named "photo".
    let boundary = content_type.split("boundary=").nth(1).unwrap().to_string();
    body.truncate(body.len() - format!("--{boundary}--\r\n").len());
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"x.jpg\"\r\n\
             Content-Type: image/jpeg\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(&photo);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let answer = common::post(&store.url("/api/v1/search"), &content_type, &body);
    assert_eq!(answer.status, 400, "{}", answer.text());
    let detail = answer.json()["detail"].as_str().unwrap().to_string();
    assert!(
        detail.contains("the image field is missing") && detail.contains("\"photo\""),
        "{detail}"
    );
}

#[test]
fn error_texts_have_no_debug_formatting() {
    let Some(store) = store() else { return };
    let photo = shop_photo(&store.data);
    let answer = search(store, &[("image", &photo), ("bbox", b"10000,10000,10,10")]);
    assert_eq!(answer.status, 400, "{}", answer.text());
    let detail = answer.json()["detail"].as_str().unwrap().to_string();
    assert!(
        !detail.contains("BBox") && !detail.contains('{') && detail.contains("left 10000"),
        "{detail}"
    );
}

#[test]
fn only_canonical_ids_are_served() {
    let Some(store) = store() else { return };
    let photo = records(&store.data, "retrieval", "bags")[0].photo;
    assert_eq!(get(&store.url(&format!("/photos/{photo}"))).status, 200);
    for alias in [
        format!("+{photo}"),
        format!("0{photo}"),
        format!("00{photo}"),
    ] {
        let answer = get(&store.url(&format!("/photos/{alias}")));
        assert_eq!(answer.status, 404, "/photos/{alias}");
        assert!(answer.text().contains("leading zeros"), "{}", answer.text());
    }
    let product = records(&store.data, "retrieval", "bags")[0].product;
    assert_eq!(
        get(&store.url(&format!("/api/v1/products/bags/0{product}"))).status,
        404
    );
}

/// A backend that takes `delay` per search and counts the searches it ran.
struct SlowBackend {
    delay: Duration,
    runs: AtomicUsize,
}

impl Backend for SlowBackend {
    fn model(&self) -> String {
        "slow test backend".to_string()
    }
    fn metrics(&self) -> Vec<String> {
        vec!["cosine".to_string()]
    }
    fn categories(&self) -> Vec<CategoryCount> {
        vec![CategoryCount {
            name: "bags".to_string(),
            products: 0,
        }]
    }
    fn products(&self, _: &str, _: usize, _: usize) -> (Vec<Product>, usize) {
        (Vec::new(), 0)
    }
    fn product(&self, _: &str, _: u64) -> Option<Product> {
        None
    }
    fn search(&self, _: &SearchQuery) -> Result<SearchOutcome, BackendError> {
        std::thread::sleep(self.delay);
        self.runs.fetch_add(1, Ordering::SeqCst);
        Ok(SearchOutcome {
            hits: Vec::new(),
            query_crop_jpeg: None,
            inference_ms: self.delay.as_secs_f64() * 1000.0,
        })
    }
    fn similar(&self, _: &str, _: u64, _: usize) -> Result<Vec<Hit>, BackendError> {
        Ok(Vec::new())
    }
    fn photo(&self, _: u64) -> Option<Vec<u8>> {
        None
    }
}

fn slow_store(delay: Duration, options: StoreOptions) -> (RunningStore, Arc<SlowBackend>) {
    let backend = Arc::new(SlowBackend {
        delay,
        runs: AtomicUsize::new(0),
    });
    let store = start(
        StoreOptions {
            bind: "127.0.0.1:0".to_string(),
            inference_workers: 1,
            ..options
        },
        Readiness::ready(backend.clone()),
    )
    .expect("start the store");
    (store, backend)
}

/// A small valid JPEG.
fn small_jpeg() -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80)
        .encode_image(&image::RgbImage::from_pixel(
            64,
            64,
            image::Rgb([90, 60, 30]),
        ))
        .expect("encode a JPEG");
    out
}

#[test]
fn searches_waiting_past_the_deadline_get_503_without_running() {
    let (store, backend) = slow_store(
        Duration::from_millis(600),
        StoreOptions {
            queue_deadline: Duration::from_millis(250),
            ..StoreOptions::default()
        },
    );
    let addr = store.addr();
    let jpeg = small_jpeg();
    let answers: Vec<Answer> = (0..4u8)
        .map(|i| {
            let request = search_request("/api/v1/search", &[("image", &jpeg)]);
            let thread = std::thread::spawn(move || exchange(client(10 + i), addr, &request));
            // In order: the first takes the worker, the others wait.
            std::thread::sleep(Duration::from_millis(40));
            thread
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("a client"))
        .collect();
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(statuses, vec![200, 503, 503, 503], "{statuses:?}");
    for answer in &answers[1..] {
        assert_eq!(answer.header("retry-after"), Some("2"));
        assert!(answer.text().contains("deadline"), "{}", answer.text());
    }
    // The expired searches never ran.
    assert_eq!(backend.runs.load(Ordering::SeqCst), 1);
    let metrics = get(&format!("http://{addr}/metrics")).text();
    assert!(
        metrics.contains("wtb_rejected_total{reason=\"deadline\"} 3"),
        "{metrics}"
    );
    store.stop().expect("stop the store");
}

#[test]
fn a_trickled_body_is_cut_off_at_the_body_timeout() {
    let (store, backend) = slow_store(
        Duration::from_millis(1),
        StoreOptions {
            limits: Limits {
                body_timeout: Duration::from_millis(1500),
                ..Limits::default()
            },
            ..StoreOptions::default()
        },
    );
    let request = search_request("/api/v1/search", &[("image", &small_jpeg())]);
    let mut stream = connect_from(client(20), store.addr());
    let started = Instant::now();
    // The headers and a little of the body, then one byte every 200 ms.
    let head_end = request.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    stream.write_all(&request[..head_end + 10]).unwrap();
    let mut sent = head_end + 10;
    stream.set_nonblocking(false).expect("a blocking socket");
    while started.elapsed() < Duration::from_secs(6) && sent < request.len() {
        std::thread::sleep(Duration::from_millis(200));
        if stream.write_all(&request[sent..sent + 1]).is_err() {
            break;
        }
        sent += 1;
        // Stop as soon as the store has answered.
        stream
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let mut peek = [0u8; 1];
        if matches!(stream.peek(&mut peek), Ok(n) if n > 0) {
            break;
        }
    }
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let answer = read_answer(&mut stream);
    let elapsed = started.elapsed();
    assert_eq!(answer.status, 408, "{}", answer.text());
    assert!(
        answer.text().contains("did not arrive"),
        "{}",
        answer.text()
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "answered after {elapsed:?}"
    );
    assert_eq!(backend.runs.load(Ordering::SeqCst), 0);
    let metrics = get(&format!("http://{}/metrics", store.addr())).text();
    assert!(metrics.contains("wtb_body_timeouts_total 1"), "{metrics}");
    store.stop().expect("stop the store");
}

/// One field of a fuzzed form: name, optional file name and type, content.
#[derive(Debug, Clone)]
struct FuzzField {
    name: String,
    filename: Option<String>,
    content_type: Option<String>,
    content: Vec<u8>,
}

fn fuzz_field() -> impl proptest::strategy::Strategy<Value = FuzzField> {
    use proptest::prelude::*;
    let name = prop_oneof![
        4 => Just("image".to_string()),
        1 => Just("bbox".to_string()),
        1 => Just("k".to_string()),
        1 => Just("category".to_string()),
        1 => Just("metric".to_string()),
        1 => Just("photo".to_string()),
        1 => "[a-z\"\\\\ ]{0,12}",
    ];
    let content = prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..64),
        2 => "[0-9, .-]{0,24}".prop_map(String::into_bytes),
        1 => (any::<u16>()).prop_map(|n| small_jpeg()[..(n as usize % 700).min(small_jpeg().len())].to_vec()),
        4 => Just(small_jpeg()),
        1 => (1usize..40_000).prop_map(|n| vec![b'x'; n]),
    ];
    (
        name,
        proptest::option::of("[a-z.]{0,10}"),
        proptest::option::of("[a-z/]{0,16}"),
        content,
    )
        .prop_map(|(name, filename, content_type, content)| FuzzField {
            name,
            filename,
            content_type,
            content,
        })
}

#[test]
fn fuzzed_multipart_forms_get_client_errors_never_server_errors() {
    use proptest::prelude::*;
    let (store, _backend) = slow_store(
        Duration::from_millis(0),
        StoreOptions {
            queue: 64,
            limits: Limits {
                max_upload_bytes: 32 * 1024,
                body_timeout: Duration::from_secs(5),
                ..Limits::default()
            },
            ..StoreOptions::default()
        },
    );
    let addr = store.addr();
    let statuses = std::cell::RefCell::new(std::collections::BTreeMap::<u16, u64>::new());
    let strategy = (
        proptest::collection::vec(fuzz_field(), 0..6),
        "[A-Za-z0-9'()+_,-]{1,70}",
        prop_oneof![7 => Just(0u8), 1 => Just(1), 1 => Just(2), 1 => Just(3)],
        wtb_testdata::fuzz::mutations(),
        proptest::bool::weighted(0.25),
        any::<bool>(),
    );
    wtb_testdata::fuzz::fuzz(
        "multipart forms",
        256,
        strategy,
        |(fields, boundary, declared, changes, damaged, page)| {
            let mut body = Vec::new();
            for field in &fields {
                body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
                let mut disposition =
                    format!("Content-Disposition: form-data; name=\"{}\"", field.name);
                if let Some(filename) = &field.filename {
                    disposition.push_str(&format!("; filename=\"{filename}\""));
                }
                body.extend_from_slice(disposition.as_bytes());
                body.extend_from_slice(b"\r\n");
                if let Some(content_type) = &field.content_type {
                    body.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
                }
                body.extend_from_slice(b"\r\n");
                body.extend_from_slice(&field.content);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
            if damaged {
                body = wtb_testdata::fuzz::mutate(&body, &changes);
            }
            let content_type = match declared {
                0 => format!("multipart/form-data; boundary=\"{boundary}\""),
                1 => "multipart/form-data; boundary=other".to_string(),
                2 => "multipart/form-data".to_string(),
                _ => "application/octet-stream".to_string(),
            };
            let path = if page { "/search" } else { "/api/v1/search" };
            let request = raw_post(path, &content_type, &body);
            let answer = exchange(client(30), addr, &request);
            *statuses.borrow_mut().entry(answer.status).or_default() += 1;
            prop_assert!(
                [200, 400, 408, 413, 415, 422, 429, 503].contains(&answer.status),
                "status {}: {}",
                answer.status,
                answer.text()
            );
            Ok(())
        },
    );
    let statuses = statuses.into_inner();
    eprintln!("multipart statuses: {statuses:?}");
    // The forms reach every stage: some searches succeed, most are refused with a reason.
    assert!(
        statuses.contains_key(&200) && statuses.contains_key(&400),
        "{statuses:?}"
    );
    assert_eq!(get(&format!("http://{addr}/healthz")).status, 200);
    store.stop().expect("stop the store");
}
