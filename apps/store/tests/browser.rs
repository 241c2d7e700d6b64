//! Browser tests: headless Chromium driven over the W3C WebDriver protocol (chromedriver) from
//! Rust. Upload a photo, draw a box, see 12 result cards, open a product page; the home page
//! shows no broken image, no native file control and no period wrapped onto a line of its own;
//! a demo photo finds 12 demo products. Screenshots of the pages are saved under the test
//! output folder. Skipped with a message when chromium or chromedriver is absent.

mod common;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};
use wtb_embed::{DeviceChoice, EmbedderConfig, ModelKind};
use wtb_store::{demo_catalogue, RunningStore, DEMO_DIR};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key W3C WebDriver uses for element references.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process we started, and one browser session in it.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver and a headless Chromium window whose page is `width` x `height`
    /// pixels.
    fn launch(width: u32, height: u32) -> Result<Browser, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {CHROMEDRIVER}: {e}"))?;
        let base = format!("http://127.0.0.1:{port}");
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            _profile: tempfile::tempdir().map_err(|e| e.to_string())?,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("{}/status", browser.base))
            .call()
            .is_err()
        {
            if Instant::now() > deadline {
                return Err("chromedriver did not start".into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = browser._profile.path().display().to_string();
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", format!("--window-size={width},{height}"),
                    format!("--user-data-dir={profile}"),
                ]
            }
        } } });
        let answer = browser.call("POST", "/session", Some(capabilities))?;
        browser.session = answer["sessionId"]
            .as_str()
            .ok_or_else(|| format!("no session id in {answer}"))?
            .to_string();
        // The window's frame takes part of --window-size: grow the window so that the page
        // itself (and so a screenshot) is `width` x `height`.
        let inner = browser.script("return [window.innerWidth, window.innerHeight];");
        let [inner_w, inner_h] = [0, 1].map(|i| inner[i].as_i64().unwrap_or_default());
        let (width, height) = (i64::from(width), i64::from(height));
        if inner_w > 0 && inner_h > 0 && (inner_w, inner_h) != (width, height) {
            browser.session_call(
                "POST",
                "/window/rect",
                Some(json!({ "width": 2 * width - inner_w, "height": 2 * height - inner_h })),
            );
        }
        Ok(browser)
    }

    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}{}", self.base, path);
        let request = ureq::request(method, &url).timeout(Duration::from_secs(60));
        let result = match body {
            Some(body) => request.send_json(body),
            None => request.call(),
        };
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(code, r)) => {
                return Err(format!(
                    "{method} {path}: {code} {}",
                    r.into_string().unwrap_or_default()
                ))
            }
            Err(e) => return Err(format!("{method} {path}: {e}")),
        };
        let value: Value = response.into_json().map_err(|e| e.to_string())?;
        Ok(value["value"].clone())
    }

    fn session_call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.call(method, &format!("/session/{}{}", self.session, path), body)
            .unwrap_or_else(|e| panic!("webdriver: {e}"))
    }

    fn goto(&self, url: &str) {
        self.session_call("POST", "/url", Some(json!({ "url": url })));
    }

    fn find(&self, css: &str) -> String {
        let value = self.session_call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        value[ELEMENT]
            .as_str()
            .unwrap_or_else(|| {
                let source = self.session_call("GET", "/source", None);
                let url = self.session_call("GET", "/url", None);
                panic!("no element {css} ({value}) at {url}; page: {source}")
            })
            .to_string()
    }

    fn count(&self, css: &str) -> usize {
        self.session_call(
            "POST",
            "/elements",
            Some(json!({ "using": "css selector", "value": css })),
        )
        .as_array()
        .map_or(0, Vec::len)
    }

    fn script(&self, source: &str) -> Value {
        self.session_call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": source, "args": [] })),
        )
    }

    fn wait_until(&self, what: &str, mut check: impl FnMut(&Browser) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !check(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Chooses `photo` in the search form's file input and waits until its preview shows.
    fn choose_photo(&self, photo: &Path) {
        let input = self.find("#image-input");
        self.session_call(
            "POST",
            &format!("/element/{input}/value"),
            Some(json!({ "text": photo.display().to_string() })),
        );
        self.wait_until("the preview", |b| {
            b.script(
                "var p = document.getElementById('preview'); return p.getClientRects().length > 0 && p.complete && p.naturalWidth > 0;",
            ) == json!(true)
        });
    }

    fn screenshot(&self, path: &Path) {
        let data = self.session_call("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("screenshot is base64");
        std::fs::write(path, png).expect("write a screenshot");
        eprintln!("screenshot: {}", path.display());
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.call("DELETE", &format!("/session/{}", self.session), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn screenshot_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wtb-store-screenshots");
    std::fs::create_dir_all(&dir).expect("create the screenshot folder");
    dir
}

/// Whether chromium and chromedriver are installed (a skip message when not).
fn have_browser() -> bool {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        if !Path::new(tool).exists() {
            eprintln!("skipping: {tool} not found (install Debian's chromium and chromium-driver)");
            return false;
        }
    }
    true
}

#[test]
fn upload_draw_a_box_see_results_and_open_a_product() {
    if !have_browser() {
        return;
    }
    let Some(store) = common::store() else { return };
    let browser =
        Browser::launch(1000, 1200).unwrap_or_else(|e| panic!("cannot start the browser: {e}"));
    let shots = screenshot_dir();

    // A street photo with its box, so the box we draw is meaningful.
    let pair = common::records(&store.data, "test_pairs", "bags")[0].clone();
    let photo_file = store
        .data
        .join(format!("photos_resized/{}.jpg", pair.photo));

    browser.goto(&store.url("/"));
    let input = browser.find("#image-input");
    browser.session_call(
        "POST",
        &format!("/element/{input}/value"),
        Some(json!({ "text": photo_file.display().to_string() })),
    );
    browser.wait_until("the preview", |b| {
        b.script(
            "var p = document.getElementById('preview'); return p.complete && p.naturalWidth > 0;",
        ) == json!(true)
    });

    // Drag from the box's top-left corner to its bottom-right corner, in displayed pixels.
    let size = browser.script(
        "var p = document.getElementById('preview'); return [p.clientWidth, p.clientHeight, p.naturalWidth, p.naturalHeight];",
    );
    let [shown_w, shown_h, natural_w, natural_h] =
        [0, 1, 2, 3].map(|i| size[i].as_f64().expect("preview size"));
    let bbox = pair.bbox.unwrap();
    let (sx, sy) = (shown_w / natural_w, shown_h / natural_h);
    // Pointer offsets are relative to the element's centre.
    let at = |x: f64, y: f64| {
        (
            (x * sx - shown_w / 2.0) as i64,
            (y * sy - shown_h / 2.0) as i64,
        )
    };
    let (x0, y0) = at(bbox.left + 2.0, bbox.top + 2.0);
    let (x1, y1) = at(bbox.left + bbox.width - 2.0, bbox.top + bbox.height - 2.0);
    let preview = browser.find("#preview");
    let origin = json!({ ELEMENT: preview });
    browser.session_call(
        "POST",
        "/actions",
        Some(json!({ "actions": [{
            "type": "pointer", "id": "mouse", "parameters": { "pointerType": "mouse" },
            "actions": [
                { "type": "pointerMove", "origin": origin, "x": x0, "y": y0 },
                { "type": "pointerDown", "button": 0 },
                { "type": "pointerMove", "origin": origin, "x": (x0 + x1) / 2, "y": (y0 + y1) / 2, "duration": 100 },
                { "type": "pointerMove", "origin": origin, "x": x1, "y": y1, "duration": 100 },
                { "type": "pointerUp", "button": 0 }
            ]
        }] })),
    );
    let sent_box = browser.script("return document.getElementById('bbox').value;");
    let sent: Vec<f64> = sent_box
        .as_str()
        .unwrap_or_default()
        .split(',')
        .filter_map(|v| v.parse().ok())
        .collect();
    assert_eq!(sent.len(), 4, "box field {sent_box}");
    // The box drawn on the scaled preview maps back to the photo's pixels, within a few pixels.
    let tolerance = 4.0 / sx.min(sy) + 4.0;
    for (got, want) in sent.iter().zip([
        bbox.left + 2.0,
        bbox.top + 2.0,
        bbox.width - 4.0,
        bbox.height - 4.0,
    ]) {
        assert!(
            (got - want).abs() <= tolerance,
            "box {sent:?} vs label {bbox:?}"
        );
    }
    assert_eq!(
        browser.script("return document.getElementById('box').hidden;"),
        json!(false)
    );
    browser.screenshot(&shots.join("home.png"));

    let button = browser.find("#search-button");
    browser.session_call("POST", &format!("/element/{button}/click"), Some(json!({})));
    browser.wait_until("12 result cards", |b| b.count(".result-card") == 12);
    browser.wait_until("result photos", |b| {
        b.script("return Array.from(document.images).every(function (i) { return i.complete && i.naturalWidth > 0; });")
            == json!(true)
    });
    browser.screenshot(&shots.join("results.png"));

    let link = browser.find(".result-card a");
    browser.session_call("POST", &format!("/element/{link}/click"), Some(json!({})));
    browser.wait_until("the product page", |b| b.count("#product-name") == 1);
    assert!(browser.count("#product-photos img") >= 1);
    assert_eq!(browser.count(".similar-card"), 12);
    browser.wait_until("product photos", |b| {
        b.script("return Array.from(document.images).every(function (i) { return i.complete && i.naturalWidth > 0; });")
            == json!(true)
    });
    browser.screenshot(&shots.join("product.png"));
}

/// The shipped half-precision MobileNetV2 weights, the store's fallback when no others are found.
const SHIPPED_WEIGHTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../crates/embed/weights/mobilenet_v2_imagenet1k_fp16.safetensors"
);

/// A store serving the demo catalogue of the repository with the shipped weights.
struct DemoStore {
    addr: std::net::SocketAddr,
    _store: RunningStore,
}

impl DemoStore {
    fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

static DEMO_STORE: OnceLock<DemoStore> = OnceLock::new();

/// The demo store shared by the tests of this binary (started on first use). Its index is
/// cached under the target folder, never in the source tree.
fn demo_store() -> &'static DemoStore {
    DEMO_STORE.get_or_init(|| {
        let embedder = EmbedderConfig {
            weights: Some(PathBuf::from(SHIPPED_WEIGHTS)),
            device: DeviceChoice::Cpu,
            ..EmbedderConfig::new(ModelKind::MobileNetV2)
        };
        let mut config = demo_catalogue(embedder, 32, 40_000_000);
        let cache = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wtb-store-demo-cache");
        std::fs::create_dir_all(&cache).expect("create the demo index cache folder");
        config.index = cache.join(config.index.file_name().expect("an index file name"));
        let store = common::serve(&config);
        DemoStore {
            addr: store.addr(),
            _store: store,
        }
    })
}

/// A demo photo's file, as a canonical path (chromedriver refuses others).
fn demo_photo(photo: u64) -> PathBuf {
    Path::new(DEMO_DIR)
        .join(format!("photos/{photo}.jpg"))
        .canonicalize()
        .expect("a demo photo")
}

/// The visible images (with a layout box) that did not load: `outerHTML` of each.
const BROKEN_IMAGES: &str = "return Array.from(document.images)
    .filter(function (i) { return i.getClientRects().length > 0; })
    .filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
    .map(function (i) { return i.outerHTML; });";

/// Punctuation that begins a rendered line (a "." wrapped away from its word): the text of
/// each such line's start, with the text before it.
const LONE_PUNCTUATION: &str = "var chars = [];
    var walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    var node;
    while ((node = walker.nextNode())) {
      for (var i = 0; i < node.data.length; i++) {
        if (/\\s/.test(node.data[i])) { continue; }
        var range = document.createRange();
        range.setStart(node, i);
        range.setEnd(node, i + 1);
        var rects = range.getClientRects();
        if (rects.length && rects[0].height > 0) { chars.push({ c: node.data[i], r: rects[0] }); }
      }
    }
    var problems = [];
    for (var k = 1; k < chars.length; k++) {
      var a = chars[k - 1].r, b = chars[k].r;
      var sameLine = a.bottom > b.top + 1 && a.top < b.bottom - 1;
      if (!sameLine && /[.,;:!?]/.test(chars[k].c)) {
        var before = chars.slice(Math.max(0, k - 20), k).map(function (x) { return x.c; }).join('');
        problems.push(before + ' | ' + chars[k].c);
      }
    }
    return problems;";

/// How the native file input shows: whether it is visible, and whether it takes focus.
const FILE_INPUT: &str = "var input = document.getElementById('image-input');
    var r = input.getBoundingClientRect();
    var s = getComputedStyle(input);
    var clipped = s.clipPath !== 'none' || (s.clip && s.clip !== 'auto');
    var shown = r.width > 1 && r.height > 1 && !clipped && s.opacity !== '0'
      && s.visibility !== 'hidden';
    input.focus();
    var focusable = document.activeElement === input;
    input.blur();
    return { shown: shown, focusable: focusable, required: input.required,
             box: [r.width, r.height] };";

#[test]
fn the_home_page_has_no_broken_image_native_file_control_or_lone_period() {
    if !have_browser() {
        return;
    }
    let store = demo_store();
    let browser =
        Browser::launch(1000, 1200).unwrap_or_else(|e| panic!("cannot start the browser: {e}"));
    let shots = screenshot_dir();

    browser.goto(&store.url("/"));
    browser.wait_until("the page", |b| {
        b.script("return document.readyState;") == json!("complete")
    });
    browser.screenshot(&shots.join("home-empty.png"));

    // Every problem at once, so one run shows all that is wrong with the page.
    let mut problems = Vec::new();
    let broken = browser.script(BROKEN_IMAGES);
    if broken != json!([]) {
        problems.push(format!("visible images that did not load: {broken}"));
    }
    let input = browser.script(FILE_INPUT);
    if input["shown"] != json!(false) {
        problems.push(format!("the native file control shows: {input}"));
    }
    if input["focusable"] != json!(true) || input["required"] != json!(true) {
        problems.push(format!(
            "the file input is not focusable and required: {input}"
        ));
    }
    let lone = browser.script(LONE_PUNCTUATION);
    if lone != json!([]) {
        problems.push(format!("punctuation that begins a line: {lone}"));
    }
    let lines = browser.script(
        "var p = document.getElementById('drop-hint');
         return p.getBoundingClientRect().height / parseFloat(getComputedStyle(p).lineHeight);",
    );
    if !lines.as_f64().is_some_and(|l| l < 1.5) {
        problems.push(format!("the drop hint takes {lines} lines, not one"));
    }
    assert!(problems.is_empty(), "the home page: {problems:#?}");

    // Searching without a photo stays on the page and says why.
    let button = browser.find("#search-button");
    browser.session_call("POST", &format!("/element/{button}/click"), Some(json!({})));
    browser.wait_until("the missing-photo message", |b| {
        b.script("var e = document.getElementById('drop-error'); return !!e && !e.hidden && e.getClientRects().length > 0;")
            == json!(true)
    });
    assert_eq!(
        browser.script("return location.pathname;"),
        json!("/"),
        "a search without a photo left the page"
    );
    browser.screenshot(&shots.join("home-missing-photo.png"));

    // A chosen photo shows, loaded, and the message goes.
    browser.choose_photo(&demo_photo(1));
    assert_eq!(browser.script(BROKEN_IMAGES), json!([]));
    assert_eq!(
        browser.script("return document.getElementById('drop-error').hidden;"),
        json!(true)
    );
    browser.screenshot(&shots.join("home-photo.png"));
}

#[test]
fn a_demo_photo_finds_12_demo_products_with_their_photos() {
    if !have_browser() {
        return;
    }
    let store = demo_store();
    let browser =
        Browser::launch(1200, 900).unwrap_or_else(|e| panic!("cannot start the browser: {e}"));
    let shots = screenshot_dir();

    browser.goto(&store.url("/"));
    browser.choose_photo(&demo_photo(1));
    let button = browser.find("#search-button");
    browser.session_call("POST", &format!("/element/{button}/click"), Some(json!({})));
    browser.wait_until("12 result cards", |b| b.count(".result-card") == 12);
    // The cards' photos load lazily; load them all, then look at the top of the page.
    browser.script(
        "document.querySelectorAll('.result-card img').forEach(function (i) { i.loading = 'eager'; });",
    );
    browser.wait_until("the 12 result photos", |b| {
        b.script("var imgs = Array.from(document.querySelectorAll('.result-card img')); return imgs.length === 12 && imgs.every(function (i) { return i.complete && i.naturalWidth > 0; });")
            == json!(true)
    });
    assert_eq!(browser.script(BROKEN_IMAGES), json!([]));
    browser.script("window.scrollTo(0, 0);");
    browser.screenshot(&shots.join("demo-results.png"));
}
