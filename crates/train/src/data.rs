//! The training data: street photos of `train_pairs` (cropped to their box) and the shop photos
//! of their products, split by product into training and validation with a seed. Products of
//! `test_pairs`, and every photo of one, never enter it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use wtb_dataset::{
    photo_path, BBox, Exclusions, Labels, PairSplit, PhotoId, ProductKey, QueryOptions,
};

use crate::TrainError;

/// Whether an item is a street photo (a query) or a shop photo (a gallery entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// A street photo cropped to the garment's box.
    Street,
    /// A shop photo.
    Shop,
}

/// Which part of the data an item's product belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// Learned from.
    Train,
    /// Held out for validation and early stopping.
    Validation,
    /// A shop-only product (in no pairs file): a negative for training, a distractor for
    /// validation.
    Distractor,
}

/// One photo (or crop) of the training data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainItem {
    /// Unique id: `street/<category>/<photo>/<product>` or `shop/<category>/<photo>/<product>`.
    pub id: String,
    /// The image file.
    pub path: PathBuf,
    /// The box of a street photo.
    pub bbox: Option<BBox>,
    /// The product shown.
    pub product: ProductKey,
    /// Street or shop.
    pub kind: ItemKind,
    /// Training, validation or distractor.
    pub part: Part,
}

/// How the training data is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataOptions {
    /// Fraction of the training products held out for validation.
    pub validation_fraction: f64,
    /// Seed of the validation split.
    pub seed: u64,
    /// Whether shop photos of products in no pairs file are used (as negatives).
    pub distractors: bool,
}

impl Default for DataOptions {
    fn default() -> Self {
        DataOptions {
            validation_fraction: 0.0,
            seed: 20,
            distractors: true,
        }
    }
}

/// The training data of a label folder.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainingSet {
    /// Every item, sorted by id.
    pub items: Vec<TrainItem>,
    /// Products of `test_pairs`: none of them, and no photo of one, is in `items`.
    pub test_products: BTreeSet<ProductKey>,
    /// Pair records and shop photos left out, with the reason.
    pub left_out: Vec<(String, String)>,
}

/// SplitMix64: the seeded, platform-independent generator of every random choice in training.
#[derive(Debug, Clone)]
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A uniform number in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// A uniform index below `n` (`n` > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_f64() * n as f64) as usize % n.max(1)
    }

    /// Shuffles `items` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i + 1);
            items.swap(i, j);
        }
    }
}

impl TrainingSet {
    /// Builds the training data of `labels` (photos in `photos`), less the photos of
    /// `exclusions`. Fails when the label folder has no usable training pair.
    pub fn from_labels(
        labels: &Labels,
        photos: &Path,
        exclusions: Option<&Exclusions>,
        options: &DataOptions,
    ) -> Result<TrainingSet, TrainError> {
        if !(0.0..1.0).contains(&options.validation_fraction) {
            return Err(TrainError::Config(format!(
                "the validation fraction {} is not in [0, 1)",
                options.validation_fraction
            )));
        }
        let mut left_out = Vec::new();
        let mut test_products: BTreeSet<ProductKey> = BTreeSet::new();
        let mut test_photos: BTreeSet<PhotoId> = BTreeSet::new();
        for (category, cat) in &labels.categories {
            for pair in &cat.test {
                test_products.insert(ProductKey::new(category.clone(), pair.product));
                test_photos.insert(pair.photo);
            }
        }
        let gallery = labels.gallery(None, exclusions);
        // Every photo of a test product, shop photos included, stays out of training.
        for item in &gallery.items {
            if test_products.contains(&item.product) {
                test_photos.insert(item.photo);
            }
        }

        let train = labels.queries(&QueryOptions {
            categories: None,
            splits: vec![PairSplit::Train],
            single_item_only: false,
        });
        for skipped in &train.skipped {
            left_out.push((
                format!(
                    "train pair {} of {}/{}",
                    skipped.record,
                    skipped.product.category.as_str(),
                    skipped.photo.0
                ),
                format!("{:?}", skipped.reason),
            ));
        }
        let mut paired: BTreeSet<ProductKey> = BTreeSet::new();
        let mut street = Vec::new();
        for query in &train.queries {
            if test_products.contains(&query.product) {
                left_out.push((
                    street_id(&query.product, query.photo),
                    "its product is also a test product".into(),
                ));
                continue;
            }
            if test_photos.contains(&query.photo) {
                left_out.push((
                    street_id(&query.product, query.photo),
                    "the photo is also a test photo".into(),
                ));
                continue;
            }
            if exclusions.is_some_and(|e| e.contains(query.photo)) {
                left_out.push((
                    street_id(&query.product, query.photo),
                    "excluded by the exclusion file".into(),
                ));
                continue;
            }
            paired.insert(query.product.clone());
            street.push(query.clone());
        }
        if street.is_empty() {
            return Err(TrainError::NoTrainingPairs(labels.dir.clone()));
        }
        let every_paired: BTreeSet<ProductKey> = labels
            .categories
            .iter()
            .flat_map(|(category, cat)| {
                cat.train
                    .iter()
                    .chain(&cat.test)
                    .map(move |p| ProductKey::new(category.clone(), p.product))
            })
            .collect();

        // The validation products: a seeded shuffle of the sorted paired products.
        let mut products: Vec<ProductKey> = paired.iter().cloned().collect();
        SplitMix64(options.seed).shuffle(&mut products);
        let n_validation = (products.len() as f64 * options.validation_fraction).round() as usize;
        let validation: BTreeSet<ProductKey> = products.into_iter().take(n_validation).collect();
        let part_of = |product: &ProductKey| {
            if validation.contains(product) {
                Part::Validation
            } else {
                Part::Train
            }
        };

        let mut items = Vec::new();
        for query in street {
            items.push(TrainItem {
                id: street_id(&query.product, query.photo),
                path: photo_path(photos, query.photo),
                bbox: Some(query.bbox),
                part: part_of(&query.product),
                product: query.product,
                kind: ItemKind::Street,
            });
        }
        for item in &gallery.items {
            let part = if paired.contains(&item.product) {
                part_of(&item.product)
            } else if !every_paired.contains(&item.product) && options.distractors {
                Part::Distractor
            } else {
                continue;
            };
            let id = format!(
                "shop/{}/{}/{}",
                item.product.category.as_str(),
                item.photo.0,
                item.product.product.0
            );
            if test_photos.contains(&item.photo) {
                left_out.push((id, "the photo also shows a test product".into()));
                continue;
            }
            items.push(TrainItem {
                id,
                path: photo_path(photos, item.photo),
                bbox: None,
                product: item.product.clone(),
                kind: ItemKind::Shop,
                part,
            });
        }
        items.sort_by(|a, b| a.id.cmp(&b.id));
        items.dedup_by(|a, b| a.id == b.id);
        Ok(TrainingSet {
            items,
            test_products,
            left_out,
        })
    }

    /// A sha256 over every item (id, file name, box, product, part): two heads trained on the
    /// same data carry the same fingerprint.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        for item in &self.items {
            let name = item
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            hasher.update(format!(
                "{}\t{name}\t{:?}\t{:?}\t",
                item.id, item.kind, item.part
            ));
            if let Some(b) = item.bbox {
                for v in [b.left, b.top, b.width, b.height] {
                    hasher.update(v.to_le_bytes());
                }
            }
            hasher.update(b"\n");
        }
        hex::encode(hasher.finalize())
    }

    /// Item counts by (kind, part).
    pub fn counts(&self) -> BTreeMap<(ItemKind, Part), usize> {
        let mut counts = BTreeMap::new();
        for item in &self.items {
            *counts.entry((item.kind, item.part)).or_insert(0) += 1;
        }
        counts
    }
}

fn street_id(product: &ProductKey, photo: PhotoId) -> String {
    format!(
        "street/{}/{}/{}",
        product.category.as_str(),
        photo.0,
        product.product.0
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    /// Two categories; product 30 is a test product whose shop photo 300 is also attached to
    /// train product 10, and whose street photo 900 also holds train product 11.
    fn labels() -> (tempfile::TempDir, Labels) {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let bbox = r#""bbox": {"left": 1, "top": 2, "width": 30, "height": 40}"#;
        write(
            d,
            "retrieval_tops.json",
            r#"[{"photo": 100, "product": 10}, {"photo": 101, "product": 10},
                {"photo": 110, "product": 11}, {"photo": 300, "product": 30},
                {"photo": 300, "product": 10}, {"photo": 500, "product": 50}]"#,
        );
        write(
            d,
            "train_pairs_tops.json",
            &format!(
                r#"[{{"photo": 800, "product": 10, {bbox}}}, {{"photo": 801, "product": 11, {bbox}}},
                    {{"photo": 900, "product": 11, {bbox}}}]"#
            ),
        );
        write(
            d,
            "test_pairs_tops.json",
            &format!(r#"[{{"photo": 900, "product": 30, {bbox}}}]"#),
        );
        write(
            d,
            "retrieval_bags.json",
            r#"[{"photo": 200, "product": 20}]"#,
        );
        write(
            d,
            "train_pairs_bags.json",
            &format!(r#"[{{"photo": 802, "product": 20, {bbox}}}]"#),
        );
        write(d, "test_pairs_bags.json", "[]");
        let labels = Labels::load(d).unwrap();
        (dir, labels)
    }

    #[test]
    fn no_test_product_and_no_photo_of_one_enters_training() {
        let (dir, labels) = labels();
        let set =
            TrainingSet::from_labels(&labels, dir.path(), None, &DataOptions::default()).unwrap();
        let ids: Vec<&str> = set.items.iter().map(|i| i.id.as_str()).collect();
        assert!(set
            .items
            .iter()
            .all(|i| !set.test_products.contains(&i.product)));
        assert!(
            !ids.iter()
                .any(|id| id.contains("/300/") || id.contains("/900/")),
            "{ids:?}"
        );
        assert!(ids.contains(&"street/tops/800/10"));
        assert!(ids.contains(&"shop/tops/101/10"));
        assert!(
            ids.contains(&"shop/tops/500/50"),
            "distractors are kept: {ids:?}"
        );
        assert!(set
            .left_out
            .iter()
            .any(|(id, why)| id == "street/tops/900/11" && why.contains("test photo")));
        assert!(set
            .left_out
            .iter()
            .any(|(id, why)| id == "shop/tops/300/10" && why.contains("test product")));
        let distractor = set
            .items
            .iter()
            .find(|i| i.id == "shop/tops/500/50")
            .unwrap();
        assert_eq!(distractor.part, Part::Distractor);
    }

    #[test]
    fn the_split_is_seeded_and_by_product() {
        let (dir, labels) = labels();
        let options = DataOptions {
            validation_fraction: 0.34,
            ..DataOptions::default()
        };
        let a = TrainingSet::from_labels(&labels, dir.path(), None, &options).unwrap();
        let b = TrainingSet::from_labels(&labels, dir.path(), None, &options).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.fingerprint(), b.fingerprint());
        let mut part: BTreeMap<&ProductKey, Part> = BTreeMap::new();
        for item in a.items.iter().filter(|i| i.part != Part::Distractor) {
            assert_eq!(*part.entry(&item.product).or_insert(item.part), item.part);
        }
        assert_eq!(part.values().filter(|p| **p == Part::Validation).count(), 1);
        let without = TrainingSet::from_labels(
            &labels,
            dir.path(),
            None,
            &DataOptions {
                distractors: false,
                ..options
            },
        )
        .unwrap();
        assert!(without.items.iter().all(|i| i.part != Part::Distractor));
        assert_ne!(without.fingerprint(), a.fingerprint());
    }

    #[test]
    fn no_train_pairs_is_an_error_naming_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        write(
            dir.path(),
            "retrieval_tops.json",
            r#"[{"photo": 1, "product": 1}]"#,
        );
        write(dir.path(), "train_pairs_tops.json", "[]");
        write(dir.path(), "test_pairs_tops.json", "[]");
        let labels = Labels::load(dir.path()).unwrap();
        let err = TrainingSet::from_labels(&labels, dir.path(), None, &DataOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("no training pairs"), "{err}");
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
    }
}
