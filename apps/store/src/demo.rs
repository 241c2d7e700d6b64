//! The demo catalogue: 300 real CC0 clothing photos kept in the repository (`demo/`), served
//! when the shop is started without a catalogue of its own, so that a fresh clone runs in one
//! command. Its index is built on first start into a cache folder, never into the source tree.

use std::path::{Path, PathBuf};

use crate::pipeline_backend::CatalogueConfig;

/// The demo catalogue's folder (`photos/`, `labels/`, `products.csv`) in the source tree
/// this crate was built from.
pub const DEMO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../demo");

/// Whether `labels` and `index` hold a catalogue of the user's own: an index file, or at least
/// one `retrieval_<category>.json` label file.
pub fn has_own_catalogue(labels: &Path, index: &Path) -> bool {
    if index.is_file() {
        return true;
    }
    std::fs::read_dir(labels).is_ok_and(|entries| {
        entries.flatten().any(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.starts_with("retrieval_") && name.ends_with(".json")
        })
    })
}

/// Where wheretobuy caches what it can rebuild: `$WTB_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/wheretobuy`, else `$HOME/.cache/wheretobuy`, else a `wheretobuy-cache`
/// folder in the system's temporary folder.
pub fn cache_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("WTB_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("wheretobuy");
    }
    if let Some(home) = var("HOME") {
        return PathBuf::from(home).join(".cache").join("wheretobuy");
    }
    std::env::temp_dir().join("wheretobuy-cache")
}

/// FNV-1a, a stable hash for cache file names (std's hashers may change between releases).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The demo catalogue served with `embedder`: the demo's photos, labels and product names,
/// its index in [`cache_dir`] under a name that changes with the model, its settings and its
/// weights files (so that an index of other weights is never opened).
pub fn demo_catalogue(
    embedder: wtb_embed::EmbedderConfig,
    batch_size: usize,
    max_pixels: u64,
) -> CatalogueConfig {
    let dir = Path::new(DEMO_DIR);
    let mut key = format!(
        "{}|{}|{}|{:?}",
        wtb_embed::models_name(
            embedder.model,
            &embedder
                .ensemble
                .iter()
                .map(|(kind, _)| *kind)
                .collect::<Vec<_>>()
        ),
        embedder.preprocess.name(),
        embedder.pooling.name(),
        embedder.head
    );
    let models = std::iter::once((embedder.model, embedder.weights.clone()))
        .chain(embedder.ensemble.iter().cloned());
    for (kind, file) in models {
        if let Ok(path) = wtb_embed::resolve_weights(kind, file.as_deref()) {
            let stamp = std::fs::metadata(&path)
                .map(|m| (m.len(), m.modified().ok()))
                .ok();
            key.push_str(&format!("|{}|{stamp:?}", path.display()));
        }
    }
    CatalogueConfig {
        index: cache_dir().join(format!("demo-{:016x}.wtbindex", fnv1a(&key))),
        photos: dir.join("photos"),
        labels: dir.join("labels"),
        products: Some(dir.join("products.csv")),
        embedder,
        categories: Vec::new(),
        exclusions: None,
        batch_size,
        max_pixels,
        demo: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_is_in_the_source_tree_and_its_index_is_not() {
        let config = demo_catalogue(
            wtb_embed::EmbedderConfig::new(wtb_embed::ModelKind::MobileNetV2),
            8,
            1_000_000,
        );
        assert!(config.labels.join("retrieval_tops.json").is_file());
        assert!(config.photos.join("1.jpg").is_file());
        assert!(config.demo);
        let source = Path::new(DEMO_DIR).canonicalize().unwrap();
        let source = source.parent().unwrap();
        assert!(
            !config.index.starts_with(source),
            "{}",
            config.index.display()
        );
        // Other settings, another index file.
        let mut other = wtb_embed::EmbedderConfig::new(wtb_embed::ModelKind::MobileNetV2);
        other.pooling = wtb_embed::Pooling::Max;
        assert_ne!(demo_catalogue(other, 8, 1_000_000).index, config.index);
    }

    #[test]
    fn an_own_catalogue_is_an_index_or_retrieval_labels() {
        let dir = tempfile::tempdir().unwrap();
        let labels = dir.path().join("labels");
        let index = dir.path().join("shop.wtbindex");
        assert!(!has_own_catalogue(&labels, &index));
        std::fs::create_dir_all(&labels).unwrap();
        std::fs::write(labels.join("README.md"), "").unwrap();
        assert!(!has_own_catalogue(&labels, &index));
        std::fs::write(labels.join("retrieval_tops.json"), "[]").unwrap();
        assert!(has_own_catalogue(&labels, &index));
        std::fs::remove_file(labels.join("retrieval_tops.json")).unwrap();
        std::fs::write(&index, b"x").unwrap();
        assert!(has_own_catalogue(&labels, &index));
    }
}
