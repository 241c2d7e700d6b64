//! The first command of the README on a fresh clone: the built `wtb-store` binary, started in
//! an empty folder with an empty environment, serves the demo catalogue with the shipped
//! weights. A demo photo finds its own product first; an unseen consumer photo of
//! `../shared/data/xdomain-dev` finds mostly products of its category (skipped without
//! `../shared`), and the shipped half-precision weights answer as the float32 weights do.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{get, multipart, post, products_of};

const DEMO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../demo");

/// A `wtb-store` process, killed when dropped.
struct StoreProcess {
    child: Child,
    base: String,
}

impl StoreProcess {
    /// Starts the binary in `cwd` with no environment at all and `args`, and waits until it
    /// is ready (the demo index is built on first start).
    fn start(cwd: &Path, args: &[&str]) -> StoreProcess {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wtb-store"))
            .args(["--bind", "127.0.0.1:0"])
            .args(args)
            .current_dir(cwd)
            .env_clear()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wtb-store");
        // The log names the address; it goes on being read (and echoed) so the pipe never fills.
        let (address_tx, address_rx) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let address_tx = address_tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let line = strip_ansi(&line);
                    eprintln!("wtb-store: {line}");
                    if line.contains("wtb-store is up") {
                        if let Some(addr) = line.split("addr=").nth(1) {
                            let addr = addr.split_whitespace().next().unwrap_or_default();
                            let _ = address_tx.send(addr.to_string());
                        }
                    }
                }
            });
        }
        let addr = match address_rx.recv_timeout(Duration::from_secs(120)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                panic!("wtb-store did not report its address within 2 minutes");
            }
        };
        let mut store = StoreProcess {
            child,
            base: format!("http://{addr}"),
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = store.child.try_wait() {
                panic!("wtb-store exited before it was ready: {status}");
            }
            if ureq::get(&store.url("/readyz")).call().is_ok() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(600),
                "wtb-store not ready after 10 minutes"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        store
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The (category, product) answers of `POST /api/v1/search` for a photo, best first.
    fn search(&self, photo: &[u8]) -> Vec<(String, u64)> {
        let (content_type, body) = multipart(&[("image", photo)]);
        let answer = post(&self.url("/api/v1/search"), &content_type, &body);
        assert_eq!(answer.status, 200, "{}", answer.text());
        products_of(&answer.json())
    }
}

impl Drop for StoreProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The log without colour codes (the binary decides on colour by itself).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn demo_photo(id: u64) -> Vec<u8> {
    std::fs::read(Path::new(DEMO).join(format!("photos/{id}.jpg"))).expect("read a demo photo")
}

/// Demo product → category, from `demo/products.csv`.
fn demo_categories() -> BTreeMap<u64, String> {
    let text = std::fs::read_to_string(Path::new(DEMO).join("products.csv")).expect("products");
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let mut fields = line.split(',');
            Some((fields.next()?.parse().ok()?, fields.next()?.to_string()))
        })
        .collect()
}

/// The first unseen xdomain-dev photo of each category (path, category), or `None` without
/// `../shared`.
fn unseen_photos() -> Option<Vec<(PathBuf, String)>> {
    let dir = wtb_testdata::shared_path("data/xdomain-dev/queries.csv")?;
    let dir = dir.parent().expect("xdomain-dev folder").to_path_buf();
    let categories: BTreeMap<String, String> = std::fs::read_to_string(dir.join("queries.csv"))
        .expect("read queries.csv")
        .lines()
        .skip(1)
        .filter_map(|line| line.split_once(','))
        .map(|(path, category)| (path.to_string(), category.to_string()))
        .collect();
    let unseen = std::fs::read_to_string(Path::new(DEMO).join("unseen.txt")).expect("unseen.txt");
    let mut first_of: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in unseen.lines() {
        let category = categories
            .get(path)
            .unwrap_or_else(|| panic!("{path} of unseen.txt is not in queries.csv"));
        first_of
            .entry(category.clone())
            .or_insert_with(|| dir.join(path));
    }
    Some(first_of.into_iter().map(|(c, p)| (p, c)).collect())
}

#[test]
fn a_fresh_clone_serves_the_demo_shop_with_the_shipped_weights() {
    let cwd = tempfile::tempdir().expect("temporary folder");
    let store = StoreProcess::start(cwd.path(), &[]);

    let home = get(&store.url("/"));
    assert_eq!(home.status, 200);
    assert!(
        home.text().contains("This is the demo catalogue"),
        "the home page should say it serves the demo"
    );
    assert!(
        std::fs::read_dir(cwd.path()).unwrap().next().is_none(),
        "nothing may be written into the working folder"
    );

    let categories = demo_categories();
    assert_eq!(categories.len(), 300);
    for id in [1u64, 57, 120, 181, 240, 300] {
        let found = store.search(&demo_photo(id));
        assert_eq!(found.len(), 12, "photo {id}: {found:?}");
        let distinct: std::collections::BTreeSet<_> = found.iter().collect();
        assert_eq!(distinct.len(), 12, "photo {id}: products repeat: {found:?}");
        assert_eq!(
            found[0],
            (categories[&id].clone(), id),
            "photo {id}: its own product should come first"
        );
    }

    let Some(unseen) = unseen_photos() else {
        return;
    };
    let mut in_category = 0;
    for (path, category) in &unseen {
        let found = store.search(&std::fs::read(path).expect("read an unseen photo"));
        assert_eq!(found.len(), 12, "{}: {found:?}", path.display());
        let same = found.iter().filter(|(c, _)| c == category).count();
        println!(
            "unseen {category} photo {}: {same} of 12 results in its category",
            path.display()
        );
        in_category += same;
    }
    let share = in_category as f64 / (12 * unseen.len()) as f64;
    println!(
        "unseen photos: {:.0}% of results in the photo's category",
        share * 100.0
    );
    assert!(
        share > 0.5,
        "most results should be of the photo's category ({share:.2})"
    );
}

#[test]
fn the_shipped_half_precision_weights_answer_as_the_float32_weights() {
    let Some(float32) =
        wtb_testdata::shared_path("models/mobilenet_v2_torchvision_imagenet1k.safetensors")
    else {
        return;
    };
    let Some(unseen) = unseen_photos() else {
        return;
    };
    let cwd = tempfile::tempdir().expect("temporary folder");
    let shipped = StoreProcess::start(cwd.path(), &["--demo"]);
    let float32 = float32.to_string_lossy().into_owned();
    let reference = StoreProcess::start(cwd.path(), &["--demo", "--weights", &float32]);
    let mut queries: Vec<Vec<u8>> = [3u64, 95, 160, 230, 290]
        .into_iter()
        .map(demo_photo)
        .collect();
    queries.extend(
        unseen
            .iter()
            .map(|(path, _)| std::fs::read(path).expect("read a photo")),
    );
    let (mut same_first, mut overlap) = (0, 0);
    for photo in &queries {
        let ours = shipped.search(photo);
        let theirs = reference.search(photo);
        assert_eq!(ours.len(), 12);
        same_first += usize::from(ours[0] == theirs[0]);
        overlap += ours.iter().filter(|p| theirs.contains(p)).count();
    }
    println!(
        "shipped fp16 vs float32 weights over {} queries: same first result {same_first}, \
         {overlap} of {} results shared",
        queries.len(),
        12 * queries.len()
    );
    assert_eq!(
        same_first,
        queries.len(),
        "the first result should not change"
    );
    assert!(
        overlap * 100 >= 95 * 12 * queries.len(),
        "at least 95% of the results should agree ({overlap})"
    );
}
