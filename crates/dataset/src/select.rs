//! Queries (street photos with a box), deterministic product-level splits, and galleries (the
//! shop catalog).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::clean::Exclusions;
use crate::crop::BBox;
use crate::ids::{Category, PhotoId, ProductKey};
use crate::labels::{LabelFileKind, Labels, PairSplit};
use crate::ratios::RatioIssue;

/// A street photo query: the photo, the garment's box in stored-photo pixels, and the product
/// to find.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Query {
    /// The street photo.
    pub photo: PhotoId,
    /// The product worn (its identity).
    pub product: ProductKey,
    /// The box, rescaled by `aspect_ratios.csv` when the label folder has one.
    pub bbox: BBox,
    /// The pairs file it came from.
    pub split: PairSplit,
    /// Its 0-based index in that file.
    pub record: usize,
}

/// Which queries to take from the pairs files.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryOptions {
    /// Categories to take; `None` = all.
    pub categories: Option<BTreeSet<Category>>,
    /// Pairs files to take (default: both).
    pub splits: Vec<PairSplit>,
    /// Keep only street photos with a single pair record over all categories and both files
    /// (the original project did).
    pub single_item_only: bool,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions {
            categories: None,
            splits: vec![PairSplit::Train, PairSplit::Test],
            single_item_only: false,
        }
    }
}

/// Why a pair record did not become a query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum SkipReason {
    /// The photo holds more than one item and `single_item_only` was asked.
    MultipleItems {
        /// Number of pair records of the photo.
        items: usize,
    },
    /// The box has zero width or height.
    ZeroArea,
    /// The ratio file has no row for the photo.
    NoRatio,
    /// The ratio file marks the photo as corrupted.
    CorruptedRatio,
}

/// A pair record that was skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Skipped {
    /// The street photo.
    pub photo: PhotoId,
    /// The product.
    pub product: ProductKey,
    /// The pairs file.
    pub split: PairSplit,
    /// 0-based index in that file.
    pub record: usize,
    /// Why.
    #[serde(flatten)]
    pub reason: SkipReason,
}

/// Queries and what was skipped, both in (category, file, record) order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Queries {
    /// The queries.
    pub queries: Vec<Query>,
    /// The records that were skipped, with the reason.
    pub skipped: Vec<Skipped>,
}

impl Labels {
    /// The queries of the pairs files. Records whose box has zero area, or cannot be rescaled
    /// (no ratio row, or `corrupted`), are skipped and reported, never a panic. Boxes that
    /// extend past the photo are kept; [`crate::crop`] clips them.
    pub fn queries(&self, options: &QueryOptions) -> Queries {
        let items = if options.single_item_only {
            self.items_per_street_photo()
        } else {
            BTreeMap::new()
        };
        let mut out = Queries::default();
        for (category, labels) in &self.categories {
            if let Some(wanted) = &options.categories {
                if !wanted.contains(category) {
                    continue;
                }
            }
            for &split in &[PairSplit::Train, PairSplit::Test] {
                if !options.splits.contains(&split) {
                    continue;
                }
                for (record, pair) in labels.pairs(split).iter().enumerate() {
                    let product = ProductKey::new(category.clone(), pair.product);
                    let skip = |reason| Skipped {
                        photo: pair.photo,
                        product: product.clone(),
                        split,
                        record,
                        reason,
                    };
                    if options.single_item_only {
                        let n = items.get(&pair.photo).copied().unwrap_or(0);
                        if n > 1 {
                            out.skipped
                                .push(skip(SkipReason::MultipleItems { items: n }));
                            continue;
                        }
                    }
                    let bbox = match &self.aspect_ratios {
                        None => pair.bbox,
                        Some(ratios) => match ratios.rescale(pair.photo, &pair.bbox) {
                            Ok(b) => b,
                            Err(RatioIssue::Missing) => {
                                out.skipped.push(skip(SkipReason::NoRatio));
                                continue;
                            }
                            Err(RatioIssue::Corrupted) => {
                                out.skipped.push(skip(SkipReason::CorruptedRatio));
                                continue;
                            }
                        },
                    };
                    if bbox.width <= 0.0 || bbox.height <= 0.0 {
                        out.skipped.push(skip(SkipReason::ZeroArea));
                        continue;
                    }
                    out.queries.push(Query {
                        photo: pair.photo,
                        product,
                        bbox,
                        split,
                        record,
                    });
                }
            }
        }
        out
    }

    /// The gallery (shop catalog): the retrieval photos of `categories` (`None` = all), minus
    /// the photos of `exclusions`.
    pub fn gallery(
        &self,
        categories: Option<&BTreeSet<Category>>,
        exclusions: Option<&Exclusions>,
    ) -> Gallery {
        let mut items = BTreeSet::new();
        let mut excluded = 0;
        for (category, labels) in &self.categories {
            if categories.is_some_and(|c| !c.contains(category)) {
                continue;
            }
            for r in &labels.retrieval {
                if exclusions.is_some_and(|e| e.contains(r.photo)) {
                    excluded += 1;
                    continue;
                }
                items.insert(GalleryItem {
                    photo: r.photo,
                    product: ProductKey::new(category.clone(), r.product),
                });
            }
        }
        Gallery {
            items: items.into_iter().collect(),
            excluded_records: excluded,
        }
    }
}

/// One shop photo of the gallery and the product it shows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GalleryItem {
    /// The shop photo.
    pub photo: PhotoId,
    /// The product it shows.
    pub product: ProductKey,
}

/// The shop catalog searched by queries: distinct (photo, product) items, sorted.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gallery {
    /// The items, sorted by photo then product.
    pub items: Vec<GalleryItem>,
    /// Retrieval records left out because their photo is excluded.
    pub excluded_records: usize,
}

impl Gallery {
    /// The distinct photos (a photo may show several products).
    pub fn photos(&self) -> Vec<PhotoId> {
        let mut photos: Vec<PhotoId> = self.items.iter().map(|i| i.photo).collect();
        photos.dedup();
        photos
    }

    /// The distinct products.
    pub fn products(&self) -> BTreeSet<ProductKey> {
        self.items.iter().map(|i| i.product.clone()).collect()
    }
}

/// The seed of the original project's split.
pub const ORIGINAL_SEED: u64 = 2018;

/// The categories of the original project's split.
pub const ORIGINAL_CATEGORIES: [&str; 2] = ["dresses", "tops"];

/// A deterministic split of products into parts (e.g. validation and test) with an explicit
/// seed and fractions. The same products, seed and fractions always give the same parts, on
/// every platform and version: products are sorted, shuffled with SplitMix64-driven
/// Fisher-Yates, and cut at the rounded cumulative fractions.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductSplit {
    /// The seed.
    pub seed: u64,
    /// The fraction of each part; they must be non-negative and sum to 1 (within 1e-9).
    pub fractions: Vec<f64>,
}

/// Fractions that are negative, not finite, or do not sum to 1.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("split fractions {0:?} must be non-negative and sum to 1")]
pub struct BadFractions(pub Vec<f64>);

impl ProductSplit {
    /// A split with the given seed and fractions.
    pub fn new(seed: u64, fractions: &[f64]) -> Result<Self, BadFractions> {
        let sum: f64 = fractions.iter().sum();
        if fractions.is_empty()
            || fractions.iter().any(|f| !f.is_finite() || *f < 0.0)
            || (sum - 1.0).abs() > 1e-9
        {
            return Err(BadFractions(fractions.to_vec()));
        }
        Ok(ProductSplit {
            seed,
            fractions: fractions.to_vec(),
        })
    }

    /// The original project's split: seed 2018, 50 % validation, 50 % test (part 0 is
    /// validation, part 1 test). Apply it to the test queries of dresses and tops
    /// ([`ORIGINAL_CATEGORIES`]).
    pub fn original() -> Self {
        ProductSplit {
            seed: ORIGINAL_SEED,
            fractions: vec![0.5, 0.5],
        }
    }

    /// Assigns each distinct product to a part (index into `fractions`).
    pub fn assign<'a>(
        &self,
        products: impl IntoIterator<Item = &'a ProductKey>,
    ) -> BTreeMap<ProductKey, usize> {
        let mut sorted: Vec<ProductKey> = products
            .into_iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut rng = SplitMix64(self.seed);
        for i in (1..sorted.len()).rev() {
            let j = (rng.next() % (i as u64 + 1)) as usize;
            sorted.swap(i, j);
        }
        let n = sorted.len();
        let mut out = BTreeMap::new();
        let mut start = 0;
        let mut cumulative = 0.0;
        for (part, fraction) in self.fractions.iter().enumerate() {
            cumulative += fraction;
            let end = if part + 1 == self.fractions.len() {
                n
            } else {
                ((cumulative * n as f64).round() as usize).clamp(start, n)
            };
            for p in &sorted[start..end] {
                out.insert(p.clone(), part);
            }
            start = end;
        }
        out
    }

    /// Splits queries by their product: all queries of a product land in the same part.
    pub fn split_queries(&self, queries: &[Query]) -> Vec<Vec<Query>> {
        let parts = self.assign(queries.iter().map(|q| &q.product));
        let mut out = vec![Vec::new(); self.fractions.len()];
        for q in queries {
            out[parts[&q.product]].push(q.clone());
        }
        out
    }
}

/// SplitMix64, a tiny fixed PRNG so splits never change with a dependency's version.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// The label file kind a [`PairSplit`] is read from.
impl From<PairSplit> for LabelFileKind {
    fn from(split: PairSplit) -> Self {
        match split {
            PairSplit::Train => LabelFileKind::TrainPairs,
            PairSplit::Test => LabelFileKind::TestPairs,
        }
    }
}
