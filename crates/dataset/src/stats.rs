//! Per-category statistics and unique totals.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::{Category, PhotoId, ProductKey};
use crate::labels::Labels;

/// Counts for one category, or unique totals over all categories.
///
/// For [`DatasetStats::totals`], photo and product counts are unique across categories (a
/// street photo with items of two categories counts once; products are counted by
/// [`ProductKey`]), while record counts are sums.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Distinct street photos in the pairs files.
    pub unique_street_photos: usize,
    /// Records in the pairs files (train + test).
    pub pair_records: usize,
    /// Records in `train_pairs_*`.
    pub train_records: usize,
    /// Records in `test_pairs_*`.
    pub test_records: usize,
    /// Distinct products in the pairs files.
    pub products_in_pairs: usize,
    /// Records in the retrieval files.
    pub retrieval_records: usize,
    /// Distinct shop photos in the retrieval files.
    pub unique_shop_photos: usize,
    /// Distinct products in the retrieval files.
    pub retrieval_products: usize,
}

/// Statistics of a label folder: [`Counts`] per category and unique totals.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DatasetStats {
    /// Unique totals over all categories.
    pub totals: Counts,
    /// Counts per category, keyed by name.
    pub categories: BTreeMap<Category, Counts>,
}

#[derive(Default)]
struct Sets {
    street: BTreeSet<PhotoId>,
    shop: BTreeSet<PhotoId>,
    pair_products: BTreeSet<ProductKey>,
    retrieval_products: BTreeSet<ProductKey>,
}

impl Sets {
    fn fill(&self, counts: &mut Counts) {
        counts.unique_street_photos = self.street.len();
        counts.unique_shop_photos = self.shop.len();
        counts.products_in_pairs = self.pair_products.len();
        counts.retrieval_products = self.retrieval_products.len();
    }
}

impl DatasetStats {
    /// Computes the statistics of loaded labels.
    pub fn compute(labels: &Labels) -> DatasetStats {
        let mut stats = DatasetStats::default();
        let mut all = Sets::default();
        for (category, l) in &labels.categories {
            let mut sets = Sets::default();
            let mut counts = Counts {
                train_records: l.train.len(),
                test_records: l.test.len(),
                pair_records: l.train.len() + l.test.len(),
                retrieval_records: l.retrieval.len(),
                ..Counts::default()
            };
            for r in l.train.iter().chain(&l.test) {
                sets.street.insert(r.photo);
                sets.pair_products
                    .insert(ProductKey::new(category.clone(), r.product));
            }
            for r in &l.retrieval {
                sets.shop.insert(r.photo);
                sets.retrieval_products
                    .insert(ProductKey::new(category.clone(), r.product));
            }
            sets.fill(&mut counts);
            stats.totals.train_records += counts.train_records;
            stats.totals.test_records += counts.test_records;
            stats.totals.pair_records += counts.pair_records;
            stats.totals.retrieval_records += counts.retrieval_records;
            all.street.extend(sets.street);
            all.shop.extend(sets.shop);
            all.pair_products.extend(sets.pair_products);
            all.retrieval_products.extend(sets.retrieval_products);
            stats.categories.insert(category.clone(), counts);
        }
        all.fill(&mut stats.totals);
        stats
    }
}
