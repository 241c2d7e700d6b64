//! Soak bench of the web shop: the `wtb-store` binary on loopback over the s2s-dev index for
//! ten minutes, with three kinds of clients at once, each kind from its own loopback
//! addresses (the store tells clients apart by address):
//!
//! - shoppers (8 by default, one address each): real street photos with their boxes, one
//!   search after another;
//! - bad uploaders (2): truncated JPEGs, text files, 40-megapixel PNGs, files under the wrong
//!   field name, boxes outside the photo, cut-off multipart bodies, uploads over the size cap;
//! - slow clients (3): a body trickled one byte every 200 ms, headers trickled one byte a
//!   second, and connections opened and left silent.
//!
//! After a warm-up under the full mix (a tenth of the run, 5 to 60 s, not counted), it reports
//! answers by client kind and status, the shoppers' p50/p99 latency, the server's memory (RSS)
//! from the end of the warm-up to the end, open file descriptors idle before and after, and
//! fails on any 5xx other
//! than a clean 503 (with `Retry-After`), a panic in the server's log, RSS growth over 20 %,
//! or a shopper p99 of 1 s or more.
//!
//! Settings (environment): `WTB_SOAK_SECONDS` (600), `WTB_SOAK_SHOPPERS` (8),
//! `WTB_STORE_BIN` (the `wtb-store` beside this bench's folder), `WTB_SHARED_DIR`
//! (`../shared`). The figures are also written to `benches/out/soak.json`.
//!
//! `benches/soak.sh` builds the store and runs it.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;

fn env_number(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .with_context(|| format!("{name}={value:?} is not a number")),
        Err(_) => Ok(default),
    }
}

/// One answer: status (0 when the connection failed), whether it carried Retry-After, and the
/// time it took.
#[derive(Debug, Clone, Copy)]
struct Outcome {
    status: u16,
    retry_after: bool,
    millis: f64,
}

fn connect_from(from: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((from, 0)).into())?;
    socket.connect_timeout(&to.into(), Duration::from_secs(10))?;
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    Ok(stream)
}

fn read_status(stream: &mut TcpStream) -> (u16, bool) {
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let status = head
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.contains("\r\nretry-after:"))
}

/// Sends a whole request from `from` and reads the answer.
fn exchange(from: Ipv4Addr, to: SocketAddr, request: &[u8]) -> Outcome {
    let started = Instant::now();
    let (status, retry_after) = match connect_from(from, to) {
        Ok(mut stream) => {
            // The server may answer (413) and close before it has read a too-large body.
            let _ = stream.write_all(request);
            read_status(&mut stream)
        }
        Err(_) => (0, false),
    };
    Outcome {
        status,
        retry_after,
        millis: started.elapsed().as_secs_f64() * 1000.0,
    }
}

fn form(fields: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "wtbSoakBoundary0123456789";
    let mut body = Vec::new();
    for (name, filename, value) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        let file = filename
            .map(|f| format!("; filename=\"{f}\"\r\nContent-Type: application/octet-stream"))
            .unwrap_or_default();
        body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{name}\"{file}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

fn post(path: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: soak\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn search(image: &[u8], bbox: Option<&str>) -> Vec<u8> {
    let mut fields: Vec<(&str, Option<&str>, &[u8])> = vec![("image", Some("photo.jpg"), image)];
    if let Some(bbox) = bbox {
        fields.push(("bbox", None, bbox.as_bytes()));
    }
    let (content_type, body) = form(&fields);
    post("/api/v1/search", &content_type, &body)
}

/// The abusive requests, cycled through by the bad uploaders.
fn bad_requests(photo: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let side = 6300u32;
    let mut png = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new_with_quality(
            &mut png,
            image::codecs::png::CompressionType::Best,
            image::codecs::png::FilterType::NoFilter,
        ),
        &vec![0u8; (side * side * 3) as usize],
        side,
        side,
        image::ExtendedColorType::Rgb8,
    )
    .expect("encode the PNG");
    let (content_type, wrong_field) = form(&[("photo", Some("x.jpg"), photo)]);
    let cut = {
        // A body shorter than its Content-Length, then the connection is half-closed.
        let (content_type, body) = form(&[("image", Some("x.jpg"), photo)]);
        let mut request = post("/api/v1/search", &content_type, &body);
        request.truncate(request.len() - body.len() / 2);
        request
    };
    vec![
        ("truncated jpeg", search(&photo[..photo.len() / 3], None)),
        ("text file", search(b"<html>not a photo</html>", None)),
        ("40-megapixel png", search(&png, None)),
        (
            "wrong field name",
            post("/api/v1/search", &content_type, &wrong_field),
        ),
        ("box outside", search(photo, Some("90000,90000,10,10"))),
        ("cut-off body", cut),
        (
            "over the size cap",
            search(&vec![0xFF; 11 * 1024 * 1024], None),
        ),
        ("html form, truncated jpeg", {
            let (content_type, body) = form(&[("image", Some("x.jpg"), &photo[..photo.len() / 3])]);
            post("/search", &content_type, &body)
        }),
    ]
}

/// A slow client: `kind` 0 trickles a body, 1 trickles headers, 2 connects and stays silent.
fn slow_client(
    kind: usize,
    from: Ipv4Addr,
    to: SocketAddr,
    photo: &[u8],
    stop: &AtomicBool,
) -> Outcome {
    let started = Instant::now();
    let Ok(mut stream) = connect_from(from, to) else {
        return Outcome {
            status: 0,
            retry_after: false,
            millis: 0.0,
        };
    };
    let _ = stream.set_nonblocking(false);
    let request = search(photo, None);
    let head_end = request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or(0)
        + 4;
    let (prefix, trickle, every) = match kind {
        0 => (
            &request[..head_end],
            &request[head_end..],
            Duration::from_millis(200),
        ),
        1 => (&request[..0], &request[..head_end], Duration::from_secs(1)),
        _ => (&request[..0], &request[..0], Duration::from_secs(1)),
    };
    let _ = stream.write_all(prefix);
    let mut sent = 0;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(5)));
    let mut peek = [0u8; 1];
    loop {
        if stop.load(Ordering::Relaxed) || started.elapsed() > Duration::from_secs(120) {
            break;
        }
        // Stop as soon as the server answers or closes.
        match stream.peek(&mut peek) {
            Ok(_) => break,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        std::thread::sleep(every);
        if sent < trickle.len() {
            if stream.write_all(&trickle[sent..sent + 1]).is_err() {
                break;
            }
            sent += 1;
        }
    }
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let (status, retry_after) = read_status(&mut stream);
    Outcome {
        status,
        retry_after,
        millis: started.elapsed().as_secs_f64() * 1000.0,
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((p / 100.0) * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)]
}

struct Server {
    child: Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn main() -> anyhow::Result<()> {
    let seconds = env_number("WTB_SOAK_SECONDS", 600)?;
    let shoppers = env_number("WTB_SOAK_SHOPPERS", 8)?.clamp(1, 100) as u8;
    let Some([data, weights]) = wtb_testdata::shared_paths([
        "data/s2s-dev",
        "models/mobilenet_v2_torchvision_imagenet1k.safetensors",
    ]) else {
        return Ok(());
    };
    let binary = match std::env::var_os("WTB_STORE_BIN") {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .context("the bench's folder")?
            .join("wtb-store"),
    };
    anyhow::ensure!(
        binary.is_file(),
        "no store binary at {} (build it with `cargo build -p wtb-store`, or set WTB_STORE_BIN)",
        binary.display()
    );
    let work = Path::new(env!("CARGO_TARGET_TMPDIR")).join("wtb-soak");
    std::fs::create_dir_all(&work)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let log_path = work.join("store.log");
    let log = std::fs::File::create(&log_path)?;
    let child = Command::new(&binary)
        .arg("--labels")
        .arg(data.join("labels"))
        .arg("--photos")
        .arg(data.join("photos_resized"))
        .arg("--products")
        .arg(data.join("products.csv"))
        .arg("--index")
        .arg(work.join("s2s-dev.wtbindex"))
        .args(["--model", "mobilenet_v2", "--device", "cpu"])
        .arg("--weights")
        .arg(&weights)
        .args(["--bind", &addr.to_string(), "--body-timeout-secs", "10"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let server = Server { child };
    let pid = server.child.id();
    let ready = Instant::now();
    loop {
        let outcome = exchange(
            Ipv4Addr::LOCALHOST,
            addr,
            b"GET /readyz HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n",
        );
        if outcome.status == 200 {
            break;
        }
        anyhow::ensure!(
            ready.elapsed() < Duration::from_secs(900),
            "the store did not get ready in 15 minutes (log: {})",
            log_path.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!(
        "store ready in {:.1} s (pid {pid})",
        ready.elapsed().as_secs_f64()
    );

    let queries: Vec<Vec<u8>> = wtb_benches::street_queries(&data)?
        .iter()
        .map(|q| search(&q.image, Some(&q.bbox)))
        .collect();
    let queries = Arc::new(queries);
    anyhow::ensure!(
        !queries.is_empty(),
        "no street photos in {}",
        data.display()
    );
    let photo = std::fs::read(
        std::fs::read_dir(data.join("photos_resized"))?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.metadata().is_ok_and(|m| m.len() > 4000))
            .context("a shop photo")?,
    )?;
    let bad = Arc::new(bad_requests(&photo));

    // Warm-up: every kind of request once, and a few searches (first-touch allocations).
    for (_, request) in bad.iter() {
        exchange(Ipv4Addr::new(127, 0, 0, 99), addr, request);
    }
    for request in queries.iter().take(20) {
        exchange(Ipv4Addr::new(127, 0, 0, 99), addr, request);
    }
    std::thread::sleep(Duration::from_secs(2));
    let fds_start = open_fds(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<BTreeMap<(String, u16), u64>>> = Arc::default();
    let shopper_latencies: Arc<Mutex<Vec<f64>>> = Arc::default();
    let unclean_503 = Arc::new(Mutex::new(0u64));
    let record = {
        let (results, unclean_503) = (Arc::clone(&results), Arc::clone(&unclean_503));
        move |kind: &str, outcome: Outcome| {
            *results
                .lock()
                .unwrap()
                .entry((kind.to_string(), outcome.status))
                .or_default() += 1;
            if (outcome.status == 503 || outcome.status == 429) && !outcome.retry_after {
                *unclean_503.lock().unwrap() += 1;
            }
        }
    };
    let mut threads = Vec::new();
    for i in 0..shoppers {
        let (queries, stop, latencies, record) = (
            Arc::clone(&queries),
            Arc::clone(&stop),
            Arc::clone(&shopper_latencies),
            record.clone(),
        );
        threads.push(std::thread::spawn(move || {
            let from = Ipv4Addr::new(127, 0, 1, 10 + i);
            let mut n = usize::from(i) * 13;
            while !stop.load(Ordering::Relaxed) {
                let outcome = exchange(from, addr, &queries[n % queries.len()]);
                n += 1;
                if outcome.status == 200 {
                    latencies.lock().unwrap().push(outcome.millis);
                }
                record("shopper", outcome);
            }
        }));
    }
    for i in 0..2u8 {
        let (bad, stop, record) = (Arc::clone(&bad), Arc::clone(&stop), record.clone());
        threads.push(std::thread::spawn(move || {
            let from = Ipv4Addr::new(127, 0, 2, 10 + i);
            let mut n = usize::from(i) * 3;
            while !stop.load(Ordering::Relaxed) {
                let (name, request) = &bad[n % bad.len()];
                n += 1;
                let outcome = exchange(from, addr, request);
                record(&format!("bad: {name}"), outcome);
            }
        }));
    }
    for kind in 0..3usize {
        let (stop, record, photo) = (Arc::clone(&stop), record.clone(), photo.clone());
        threads.push(std::thread::spawn(move || {
            let from = Ipv4Addr::new(127, 0, 3, 10 + kind as u8);
            let name = [
                "slow: trickled body",
                "slow: trickled headers",
                "slow: silent connection",
            ][kind];
            while !stop.load(Ordering::Relaxed) {
                let outcome = slow_client(kind, from, addr, &photo, &stop);
                if !stop.load(Ordering::Relaxed) {
                    record(name, outcome);
                }
            }
        }));
    }
    // RSS is measured from the end of a warm-up under the full mix (allocator arenas and
    // caches filled), so that growth means memory kept, not memory first used.
    let warm_up = Duration::from_secs((seconds / 10).clamp(5, 60));
    std::thread::sleep(warm_up);
    let rss_start = rss_kib(pid);
    let started = Instant::now();
    let mut rss_series = Vec::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(
            Duration::from_secs(10)
                .min(Duration::from_secs(seconds).saturating_sub(started.elapsed()))
                .max(Duration::from_millis(100)),
        );
        rss_series.push(rss_kib(pid));
        if seconds >= 60 && rss_series.len() % 6 == 0 {
            eprintln!(
                "{:.0} s: RSS {} MiB, {} fds",
                started.elapsed().as_secs_f64(),
                rss_kib(pid) / 1024,
                open_fds(pid)
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("a client thread panicked"))?;
    }
    std::thread::sleep(Duration::from_secs(6));
    let (rss_end, fds_end) = (rss_kib(pid), open_fds(pid));
    let alive = exchange(
        Ipv4Addr::LOCALHOST,
        addr,
        b"GET /healthz HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n",
    )
    .status
        == 200;
    drop(server);
    let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
    let panics = log_text.matches("panicked").count();

    let results = results.lock().unwrap().clone();
    let mut latencies = shopper_latencies.lock().unwrap().clone();
    latencies.sort_by(f64::total_cmp);
    let server_errors: u64 = results
        .iter()
        .filter(|((_, s), _)| *s >= 500 && *s != 503)
        .map(|(_, n)| n)
        .sum();
    let unclean_503 = *unclean_503.lock().unwrap();
    let growth = rss_end as f64 / rss_start.max(1) as f64 - 1.0;
    let p99 = percentile(&latencies, 99.0);
    let report = serde_json::json!({
        "seconds": started.elapsed().as_secs_f64(),
        "shoppers": shoppers,
        "answers": results.iter().map(|((kind, status), n)| serde_json::json!({"client": kind, "status": status, "count": n})).collect::<Vec<_>>(),
        "shopper_searches_ok": latencies.len(),
        "shopper_p50_ms": percentile(&latencies, 50.0),
        "shopper_p99_ms": p99,
        "shopper_max_ms": latencies.last().copied().unwrap_or(f64::NAN),
        "server_errors_other_than_503": server_errors,
        "busy_answers_without_retry_after": unclean_503,
        "panics_in_log": panics,
        "rss_start_mib": rss_start as f64 / 1024.0,
        "rss_end_mib": rss_end as f64 / 1024.0,
        "rss_max_mib": rss_series.iter().max().copied().unwrap_or(0) as f64 / 1024.0,
        "rss_growth": growth,
        "fds_start": fds_start,
        "fds_end": fds_end,
        "alive_at_end": alive,
        "cores": std::thread::available_parallelism().map_or(1, |n| n.get()),
    });
    println!(
        "soak: {:.0} s, {} shoppers",
        started.elapsed().as_secs_f64(),
        shoppers
    );
    for ((kind, status), count) in &results {
        println!("  {kind:32} {status:>3}: {count}");
    }
    println!(
        "  shoppers: {} searches answered, p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        latencies.len(),
        percentile(&latencies, 50.0),
        p99,
        latencies.last().copied().unwrap_or(f64::NAN)
    );
    println!(
        "  server: RSS {:.0} -> {:.0} MiB ({:+.1} %, peak {:.0} MiB), fds {fds_start} -> {fds_end}, 5xx other than 503: {server_errors}, 503/429 without Retry-After: {unclean_503}, panics in log: {panics}, alive: {alive}",
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0,
        growth * 100.0,
        report["rss_max_mib"].as_f64().unwrap_or(0.0)
    );
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("out");
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("soak.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    anyhow::ensure!(
        server_errors == 0,
        "{server_errors} answers were 5xx other than 503"
    );
    anyhow::ensure!(
        unclean_503 == 0,
        "{unclean_503} busy answers had no Retry-After"
    );
    anyhow::ensure!(
        panics == 0,
        "the server log has {panics} panics ({})",
        log_path.display()
    );
    anyhow::ensure!(growth < 0.2, "RSS grew by {:.1} %", growth * 100.0);
    anyhow::ensure!(p99 < 1000.0, "shopper p99 is {p99:.0} ms");
    anyhow::ensure!(alive, "the store was not answering at the end");
    Ok(())
}
