//! `wtb-testdata`: where the tests and benches of the workspace find the reference data that
//! no test can make by itself (real weights, golden outputs, label files, benchmark photos).
//!
//! The folder is `$WTB_SHARED_DIR`, or `shared` beside the project root. A test asks for the
//! paths it needs; when one is missing it gets `None` and the reason is printed, so that the
//! test can skip as it would on a fresh user machine. [`tensors`] compares model outputs with
//! the golden files.
//!
//! ```
//! // A path that no shared folder holds: the test skips, and says why.
//! assert!(wtb_testdata::shared_path("no/such/file.bin").is_none());
//! if let Some([labels, photos]) =
//!     wtb_testdata::shared_paths(["data/s2s-dev/labels", "data/s2s-dev/photos_resized"])
//! {
//!     assert!(labels.is_dir() && photos.is_dir());
//! }
//! ```

use std::path::PathBuf;

pub mod crash;
pub mod fuzz;
pub mod tensors;

/// The shared reference folder: `$WTB_SHARED_DIR`, or `shared` beside the project root;
/// canonical when it exists (browsers driven by the tests refuse paths with `..`).
pub fn shared_dir() -> PathBuf {
    let dir = std::env::var_os("WTB_SHARED_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared")));
    dir.canonicalize().unwrap_or(dir)
}

/// The paths below [`shared_dir`], or `None` after printing the first one that is missing.
pub fn shared_paths<const N: usize>(relative: [&str; N]) -> Option<[PathBuf; N]> {
    let root = shared_dir();
    let paths = relative.map(|r| root.join(r));
    present(&paths).then_some(paths)
}

/// One path below [`shared_dir`], or `None` after printing that it is missing.
pub fn shared_path(relative: &str) -> Option<PathBuf> {
    shared_paths([relative]).map(|[path]| path)
}

/// Whether every path exists; prints the first missing one (the skip message) otherwise.
pub fn present(paths: &[PathBuf]) -> bool {
    match paths.iter().find(|path| !path.exists()) {
        Some(missing) => {
            eprintln!(
                "skipping: {} not found (set WTB_SHARED_DIR to the shared reference folder)",
                missing.display()
            );
            false
        }
        None => true,
    }
}
