//! Validation retrieval: held-out street crops search the training data's shop photos of
//! their category (held-out products, training products and distractors), as the full
//! protocol does on test data.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::data::{ItemKind, Part, TrainingSet};
use crate::features::Features;

/// Validation figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// The exact product first among distinct products.
    pub acc1: f64,
    /// The exact product among the first 10 distinct products.
    pub acc10: f64,
    /// Fraction of the first 10 distinct products of the query's category when the query
    /// searches every category's shop photos.
    pub category_precision10: f64,
    /// Number of queries.
    pub queries: usize,
}

impl Scores {
    /// The figure training keeps the best epoch by: exact-item accuracy, with category
    /// precision breaking near-ties.
    pub fn selection_value(&self) -> f64 {
        self.acc1 + 0.5 * self.acc10 + 0.25 * self.category_precision10
    }
}

/// Which rows are validation queries and which the gallery they search.
#[derive(Debug, Clone)]
pub struct ValidationSplit {
    /// Rows of the features that are queries (held-out street crops, view 0).
    pub queries: Vec<usize>,
    /// Rows of the gallery (every shop photo, view 0).
    pub gallery: Vec<usize>,
}

impl ValidationSplit {
    /// The validation queries and gallery of a training set.
    pub fn new(set: &TrainingSet, features: &Features) -> ValidationSplit {
        let mut queries = Vec::new();
        let mut gallery = Vec::new();
        for row in 0..features.len() {
            if features.view[row] != 0 {
                continue;
            }
            let item = &set.items[features.item[row]];
            match (item.kind, item.part) {
                (ItemKind::Street, Part::Validation) => queries.push(row),
                (ItemKind::Shop, _) => gallery.push(row),
                _ => {}
            }
        }
        ValidationSplit { queries, gallery }
    }

    /// Scores descriptors (`rows × dim`, unit length, one per feature row) on this split.
    pub fn score(
        &self,
        set: &TrainingSet,
        features: &Features,
        descriptors: &[f32],
        dim: usize,
    ) -> Scores {
        let mut scores = Scores {
            queries: self.queries.len(),
            ..Scores::default()
        };
        if self.queries.is_empty() || self.gallery.is_empty() {
            return scores;
        }
        let row = |r: usize| &descriptors[r * dim..(r + 1) * dim];
        for &query in &self.queries {
            let target = &set.items[features.item[query]].product;
            let q = row(query);
            let mut ranked: Vec<(f32, usize)> = self
                .gallery
                .iter()
                .map(|&g| (q.iter().zip(row(g)).map(|(a, b)| a * b).sum::<f32>(), g))
                .collect();
            ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
            let mut seen = HashSet::new();
            let (mut in_category, mut all) = (Vec::new(), Vec::new());
            for &(_, g) in &ranked {
                let product = &set.items[features.item[g]].product;
                if seen.insert(product) {
                    if all.len() < 10 {
                        all.push(product);
                    }
                    if product.category == target.category {
                        in_category.push(product);
                    }
                }
                if all.len() >= 10 && in_category.len() >= 10 {
                    break;
                }
            }
            if in_category.first() == Some(&target) {
                scores.acc1 += 1.0;
            }
            if in_category.iter().take(10).any(|p| *p == target) {
                scores.acc10 += 1.0;
            }
            scores.category_precision10 +=
                all.iter().filter(|p| p.category == target.category).count() as f64 / 10.0;
        }
        let n = self.queries.len() as f64;
        scores.acc1 /= n;
        scores.acc10 /= n;
        scores.category_precision10 /= n;
        scores
    }
}
