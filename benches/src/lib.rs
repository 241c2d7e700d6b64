//! Benchmark crate: see benches/README.md. Shared here: the street photos of a benchmark.

use std::path::Path;

use anyhow::Context as _;

/// One street photo of a benchmark's test pairs: its bytes and its box as
/// `left,top,width,height` in whole pixels.
pub struct StreetQuery {
    /// The encoded photo.
    pub image: Vec<u8>,
    /// The garment's box.
    pub bbox: String,
}

/// The street photos of every `test_pairs_*.json` of a street2shop folder (`labels/`,
/// `photos_resized/`), in a fixed order.
pub fn street_queries(data: &Path) -> anyhow::Result<Vec<StreetQuery>> {
    let mut queries = Vec::new();
    for entry in std::fs::read_dir(data.join("labels"))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.starts_with("test_pairs_") {
            continue;
        }
        let records: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
        for record in records.as_array().into_iter().flatten() {
            let photo = record["photo"].as_u64().context("photo id")?;
            let b = &record["bbox"];
            let field = |k: &str| b[k].as_f64().unwrap_or(0.0).round().max(0.0);
            let bbox = format!(
                "{},{},{},{}",
                field("left"),
                field("top"),
                field("width").max(1.0),
                field("height").max(1.0)
            );
            let image = std::fs::read(data.join(format!("photos_resized/{photo}.jpg")))?;
            queries.push(StreetQuery { image, bbox });
        }
    }
    queries.sort_by(|a, b| a.bbox.cmp(&b.bbox));
    Ok(queries)
}
