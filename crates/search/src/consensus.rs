//! Category consensus: a re-ranking step for searches across several categories.
//!
//! The first `k` distinct products of a ranking vote for their categories, each with its
//! similarity (clamped at zero); every candidate then gains `weight × share` of its category's
//! vote, in similarity units. A street photo whose neighbours are mostly tops keeps the tops
//! ahead of the odd bag or shoe that happens to match its colours: the neighbourhood knows the
//! garment's kind better than any single neighbour. Visual search systems in production
//! predict the category first and search within it (Zhang et al., *Visual Search at Alibaba*,
//! KDD 2018); this is the soft form of that, with no classifier to train: the catalogue's own
//! category labels are the classes. Within one category the step changes nothing.
//!
//! ```
//! use wtb_search::consensus::Consensus;
//!
//! let consensus = Consensus { k: 3, weight: 0.1 };
//! // Best first: two tops outvote one bag.
//! let ranked = [("bags", 0.60), ("tops", 0.58), ("tops", 0.57), ("tops", 0.40)];
//! let shares = consensus.shares(ranked.iter().copied());
//! let bag = 0.60 + consensus.boost(&shares, "bags");
//! let top = 0.58 + consensus.boost(&shares, "tops");
//! assert!(top > bag);
//! # Ok::<(), wtb_search::SearchError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::{Metric, ProductHit, SearchError, SearchRequest, VectorSearch};

/// How many products vote and how much their vote weighs.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Consensus {
    /// Distinct products that vote (0: the step does nothing).
    pub k: usize,
    /// Similarity added to a candidate whose category has all the votes.
    pub weight: f32,
}

/// The consensus used by default with a learned head: the first ten products vote, a
/// unanimous category gains 0.1 of cosine (chosen a priori, then checked on the dev sets:
/// see the README).
pub const DEFAULT_CONSENSUS: Consensus = Consensus { k: 10, weight: 0.1 };

/// Each voting category's share of the vote (shares sum to one, or the map is empty).
pub type Shares = BTreeMap<String, f32>;

impl Consensus {
    /// Refuses settings that make no sense (a negative or non-finite weight).
    pub fn validate(&self) -> Result<(), SearchError> {
        if !self.weight.is_finite() || self.weight < 0.0 {
            return Err(SearchError::InvalidSetting(format!(
                "category consensus weight {} is not a finite number ≥ 0",
                self.weight
            )));
        }
        Ok(())
    }

    /// Whether the step changes anything.
    pub fn is_active(&self) -> bool {
        self.k > 0 && self.weight > 0.0
    }

    /// The shares of the first `k` of `ranked` (category, similarity), best first, one entry
    /// per distinct product: the caller deduplicates photos of one product.
    pub fn shares<'a>(&self, ranked: impl IntoIterator<Item = (&'a str, f32)>) -> Shares {
        let mut shares = Shares::new();
        let mut total = 0f32;
        for (category, similarity) in ranked.into_iter().take(self.k) {
            let vote = similarity.max(0.0);
            total += vote;
            *shares.entry(category.to_string()).or_default() += vote;
        }
        if total > 0.0 {
            shares.values_mut().for_each(|s| *s /= total);
        } else {
            shares.clear();
        }
        shares
    }

    /// The similarity a candidate of `category` gains.
    pub fn boost(&self, shares: &Shares, category: &str) -> f32 {
        self.weight * shares.get(category).copied().unwrap_or(0.0)
    }

    /// The most any candidate can gain under `shares`: what a candidate outside a shortlist
    /// could gain, to tell whether the shortlist's order is final.
    pub fn max_boost(&self, shares: &Shares) -> f32 {
        self.weight * shares.values().copied().fold(0.0, f32::max)
    }
}

/// The best `request.k` products of `backend` for `query` under category consensus, best
/// first, each with its own (unboosted) score. Exact: a shortlist of products is re-ranked, and
/// when a product outside it could still enter the first `k`, the voting categories are
/// searched on their own as well. Votes are cosine similarities under the cosine metric, inner
/// products under the inner product, one each under Euclidean distances; a boost lowers a
/// distance as it raises a similarity.
pub fn search<S: VectorSearch + ?Sized>(
    backend: &S,
    query: &[f32],
    request: &SearchRequest,
    consensus: Consensus,
) -> Result<Vec<ProductHit>, SearchError> {
    consensus.validate()?;
    if !consensus.is_active() || request.k == 0 {
        return backend.search(query, request);
    }
    let metric = request.metric;
    let shortlist = SearchRequest {
        k: (request.k.max(consensus.k)) * 4,
        ..request.clone()
    };
    let mut hits = backend.search(query, &shortlist)?;
    let shares = consensus.shares(
        hits.iter()
            .map(|h| (h.category.as_str(), vote(metric, h.score))),
    );
    let complete = hits.len() < shortlist.k;
    // Keys are similarity-like (higher is better) whatever the metric.
    let key = |score: f32| {
        if metric.higher_is_better() {
            score
        } else {
            -score
        }
    };
    let floor = hits.last().map_or(f32::NEG_INFINITY, |h| key(h.score));
    let boosted = |hit: &ProductHit| key(hit.score) + consensus.boost(&shares, &hit.category);
    let mut ranked = rank(hits.drain(..), &boosted);
    let settled = ranked
        .get(request.k - 1)
        .is_some_and(|(key, _)| *key >= floor + consensus.max_boost(&shares));
    if !complete && !settled {
        // Products below the shortlist of a favoured category may overtake: fetch each voting
        // category's own best products.
        let mut seen: BTreeSet<(String, u64)> = ranked
            .iter()
            .map(|(_, h)| (h.category.clone(), h.product))
            .collect();
        let mut extra = Vec::new();
        for category in shares.keys() {
            if !request.filter.categories.is_empty()
                && !request.filter.categories.contains(category)
            {
                continue;
            }
            let mut filter = request.filter.clone();
            filter.categories = BTreeSet::from([category.clone()]);
            let own = SearchRequest {
                k: request.k,
                filter,
                ..request.clone()
            };
            for hit in backend.search(query, &own)? {
                if seen.insert((hit.category.clone(), hit.product)) {
                    extra.push(hit);
                }
            }
        }
        ranked.extend(extra.into_iter().map(|h| (boosted(&h), h)));
        ranked = rank(ranked.into_iter().map(|(_, h)| h), &boosted);
    }
    ranked.truncate(request.k);
    Ok(ranked.into_iter().map(|(_, h)| h).collect())
}

/// A hit's vote: its similarity for the cosine and inner-product metrics, one for distances
/// that have no natural similarity.
pub fn vote(metric: Metric, score: f32) -> f32 {
    match metric {
        Metric::Cosine => 1.0 - score,
        Metric::InnerProduct => score,
        _ => 1.0,
    }
}

/// Hits sorted by their boosted score, best first; ties by category and product so that the
/// order does not depend on how the candidates were gathered.
fn rank(
    hits: impl Iterator<Item = ProductHit>,
    boosted: &dyn Fn(&ProductHit) -> f32,
) -> Vec<(f32, ProductHit)> {
    let mut ranked: Vec<(f32, ProductHit)> = hits.map(|h| (boosted(&h), h)).collect();
    ranked.sort_by(|a, b| {
        b.0.total_cmp(&a.0)
            .then_with(|| a.1.category.cmp(&b.1.category))
            .then_with(|| a.1.product.cmp(&b.1.product))
    });
    ranked
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Index, PhotoRecord, Precision};

    fn photo(category: &str, product: u64, photo: u64) -> PhotoRecord {
        PhotoRecord {
            category: category.into(),
            product,
            photo,
        }
    }

    #[test]
    fn the_agreed_category_moves_up_and_scores_stay_unboosted() {
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("model".to_string(), "test".to_string());
        let mut index = Index::new(2, Precision::F32, meta).unwrap();
        // A bag close to the query, then three tops a little further away.
        let photos = [
            photo("bags", 1, 1),
            photo("tops", 2, 2),
            photo("tops", 3, 3),
            photo("tops", 4, 4),
        ];
        let angle = |degrees: f32| {
            let r = degrees.to_radians();
            [r.cos(), r.sin()]
        };
        let vectors: Vec<f32> = [10.0, 12.0, 14.0, 16.0]
            .into_iter()
            .flat_map(angle)
            .collect();
        index.add(&photos, &vectors).unwrap();
        let request = SearchRequest::new(2, Metric::Cosine);
        let plain = index.search(&[1.0, 0.0], &request).unwrap();
        assert_eq!(plain[0].category, "bags");
        let voted = search(
            &index,
            &[1.0, 0.0],
            &request,
            Consensus { k: 4, weight: 0.1 },
        )
        .unwrap();
        assert_eq!(
            voted.iter().map(|h| h.product).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!((voted[0].score - (1.0 - 12f32.to_radians().cos())).abs() < 1e-5);
        // Inactive: the plain search.
        let off = search(
            &index,
            &[1.0, 0.0],
            &request,
            Consensus { k: 0, weight: 0.1 },
        )
        .unwrap();
        assert_eq!(off, plain);
        // A category filter is kept.
        let mut only_bags = request.clone();
        only_bags.filter.categories.insert("bags".into());
        let bags = search(&index, &[1.0, 0.0], &only_bags, DEFAULT_CONSENSUS).unwrap();
        assert_eq!(bags.len(), 1);
        assert_eq!(bags[0].category, "bags");
    }

    #[test]
    fn products_beyond_the_shortlist_are_found() {
        // k = 1 and consensus k = 1: a shortlist of 4 products. The first product is a top;
        // five bags follow, then another top a little further: a heavy weight makes that top
        // overtake the bags although it is outside the shortlist.
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("model".to_string(), "test".to_string());
        let mut index = Index::new(2, Precision::F32, meta).unwrap();
        let mut photos = vec![photo("tops", 1, 1)];
        let mut degrees = vec![1.0f32];
        for i in 0..5 {
            photos.push(photo("bags", 10 + i, 10 + i));
            degrees.push(2.0 + i as f32);
        }
        photos.push(photo("tops", 2, 2));
        degrees.push(20.0);
        let vectors: Vec<f32> = degrees
            .iter()
            .flat_map(|d| [d.to_radians().cos(), d.to_radians().sin()])
            .collect();
        index.add(&photos, &vectors).unwrap();
        let request = SearchRequest::new(2, Metric::Cosine);
        let voted = search(
            &index,
            &[1.0, 0.0],
            &request,
            Consensus { k: 1, weight: 1.0 },
        )
        .unwrap();
        assert_eq!(
            voted
                .iter()
                .map(|h| (h.category.as_str(), h.product))
                .collect::<Vec<_>>(),
            vec![("tops", 1), ("tops", 2)]
        );
    }

    #[test]
    fn votes_are_weighted_by_similarity_and_sum_to_one() {
        let c = Consensus { k: 3, weight: 0.2 };
        let shares = c.shares([("a", 0.6), ("b", 0.2), ("a", 0.2), ("b", 0.9)]);
        assert_eq!(shares.len(), 2);
        assert!((shares["a"] - 0.8).abs() < 1e-6, "{shares:?}");
        assert!((shares["b"] - 0.2).abs() < 1e-6);
        assert!((c.boost(&shares, "a") - 0.16).abs() < 1e-6);
        assert_eq!(c.boost(&shares, "unseen"), 0.0);
        assert!((c.max_boost(&shares) - 0.16).abs() < 1e-6);
    }

    #[test]
    fn negative_similarities_do_not_vote() {
        let c = Consensus { k: 5, weight: 0.1 };
        assert!(c.shares([("a", -0.3), ("b", 0.0)]).is_empty());
        let shares = c.shares([("a", -0.3), ("b", 0.5)]);
        assert_eq!(shares.get("b"), Some(&1.0));
    }

    #[test]
    fn inactive_and_invalid_settings() {
        assert!(!Consensus { k: 0, weight: 0.1 }.is_active());
        assert!(!Consensus { k: 3, weight: 0.0 }.is_active());
        assert!(DEFAULT_CONSENSUS.is_active());
        for weight in [-0.1, f32::NAN, f32::INFINITY] {
            let err = Consensus { k: 3, weight }.validate().unwrap_err();
            assert!(err.to_string().contains("consensus weight"), "{err}");
        }
    }
}
