//! Answering a photo query end to end: decode (with caps) -> crop -> embed -> search.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Instant;

use image::RgbImage;
use wtb_dataset::{crop, decode_rgb_reduced, BBox, DecodeLimits};
use wtb_embed::Embedder;
use wtb_search::consensus::{self, Consensus, DEFAULT_CONSENSUS};
use wtb_search::rerank::{expand_in_index, Expansion, DEFAULT_EXPANSION};
use wtb_search::{Filter, Index, Metric, ProductHit, SearchMode, SearchRequest, VectorSearch};

use crate::PipelineError;

/// One photo query.
#[derive(Debug, Clone, PartialEq)]
pub struct PhotoQuery<'a> {
    /// The encoded photo (JPEG, PNG, GIF, WebP or BMP; the type is detected from the bytes).
    pub image: &'a [u8],
    /// The garment's box in pixels of the photo; `None` uses the whole photo.
    pub bbox: Option<BBox>,
    /// How many distinct products to return (at least 1).
    pub k: usize,
    /// Only products of these categories (empty: all).
    pub categories: BTreeSet<String>,
    /// The metric; `None` uses the engine's default.
    pub metric: Option<Metric>,
}

/// The answer to a [`PhotoQuery`].
#[derive(Debug, Clone)]
pub struct QueryAnswer {
    /// The best distinct products, best first, with the metric's raw score.
    pub hits: Vec<ProductHit>,
    /// The metric the scores are in.
    pub metric: Metric,
    /// The region that was embedded.
    pub crop: RgbImage,
    /// Seconds spent decoding and cropping, embedding, and searching.
    pub timings: Timings,
}

/// Where a query's time went, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timings {
    /// Decoding and cropping.
    pub decode: f64,
    /// Running the model.
    pub embed: f64,
    /// Searching the index.
    pub search: f64,
}

/// A loaded model and index, answering photo queries and item-to-item queries. Queries take
/// `&self`, so one engine can serve several threads.
pub struct QueryEngine {
    embedder: Embedder,
    index: Index,
    limits: DecodeLimits,
    metric: Metric,
    margin: f64,
    expansion: Option<Expansion>,
    consensus: Option<Consensus>,
}

impl QueryEngine {
    /// Opens the index file written by [`build_index`](crate::build_index), refusing one made
    /// with another model or settings than `embedder`'s.
    pub fn open(embedder: Embedder, index_path: &Path) -> Result<QueryEngine, PipelineError> {
        let index = Index::load(index_path, Some(&embedder.meta().to_map()))?;
        QueryEngine::new(embedder, index)
    }

    /// An engine over `index`, which must have been built with `embedder`'s model and settings.
    /// Defaults: [`DecodeLimits::default`], cosine metric, no margin around boxes, category
    /// consensus ([`DEFAULT_CONSENSUS`]; see [`set_consensus`](Self::set_consensus): on the
    /// dev sets it raises category precision on real consumer photos by 4.5 points with or
    /// without a head, and costs no exact-item accuracy), and with a learned head, query
    /// expansion ([`DEFAULT_EXPANSION`]; see [`set_expansion`](Self::set_expansion)).
    pub fn new(embedder: Embedder, index: Index) -> Result<QueryEngine, PipelineError> {
        let expected = embedder.meta().to_map();
        let mut differences: Vec<String> = expected
            .iter()
            .filter(|(key, value)| index.meta().get(*key) != Some(*value))
            .map(|(key, value)| {
                format!(
                    "{key}: index has {}, model has {value}",
                    index.meta().get(key).map_or("nothing", String::as_str)
                )
            })
            .collect();
        // An index built through a learned head cannot be searched without it.
        if let (Some(head), None) = (index.meta().get("head"), expected.get("head")) {
            differences.push(format!("head: index has {head}, model has none"));
        }
        if !differences.is_empty() {
            return Err(PipelineError::Search(
                wtb_search::SearchError::MetadataMismatch {
                    path: "<index>".into(),
                    differences: differences.join("; "),
                },
            ));
        }
        let expansion = embedder.head().map(|_| DEFAULT_EXPANSION);
        let consensus = Some(DEFAULT_CONSENSUS);
        Ok(QueryEngine {
            embedder,
            index,
            limits: DecodeLimits::default(),
            metric: Metric::Cosine,
            margin: 0.0,
            expansion,
            consensus,
        })
    }

    /// Query expansion of cosine searches: the query plus its `k` nearest shop photos
    /// (`wtb_search::rerank`); `None` turns it off.
    pub fn set_expansion(&mut self, expansion: Option<Expansion>) {
        self.expansion = expansion.filter(|e| e.k > 0);
    }

    /// Category consensus of searches across categories (`wtb_search::consensus`): the
    /// categories the first products agree on move up; `None` turns it off.
    pub fn set_consensus(&mut self, consensus: Option<Consensus>) -> Result<(), PipelineError> {
        if let Some(consensus) = &consensus {
            consensus.validate()?;
        }
        self.consensus = consensus.filter(Consensus::is_active);
        Ok(())
    }

    /// The category consensus in force.
    pub fn consensus(&self) -> Option<Consensus> {
        self.consensus
    }

    /// The query expansion in force.
    pub fn expansion(&self) -> Option<Expansion> {
        self.expansion
    }

    /// Sets the decoding caps applied to query photos.
    pub fn with_limits(mut self, limits: DecodeLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Sets the default metric.
    pub fn with_metric(mut self, metric: Metric) -> Self {
        self.metric = metric;
        self
    }

    /// Sets the margin added around query boxes (a fraction of the box size on each side).
    pub fn with_margin(mut self, margin: f64) -> Self {
        self.margin = margin;
        self
    }

    /// The index.
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The embedder.
    pub fn embedder(&self) -> &Embedder {
        &self.embedder
    }

    /// The default metric.
    pub fn metric(&self) -> Metric {
        self.metric
    }

    /// Decodes the photo (refusing one over the pixel cap before allocating it, and decoding a
    /// JPEG much larger than the model needs at reduced scale), crops the box, embeds the crop
    /// and returns the best `k` distinct products.
    pub fn search(&self, query: &PhotoQuery<'_>) -> Result<QueryAnswer, PipelineError> {
        if query.k == 0 {
            return Err(PipelineError::BadQuery("k must be at least 1".to_string()));
        }
        let started = Instant::now();
        // A photo much larger than the model needs (a phone's 12 MP for a 224-pixel input) is
        // decoded at reduced scale, its box scaled with it.
        let (photo, reduction) = decode_rgb_reduced(
            query.image,
            &self.limits,
            self.embedder.source_side(),
            query.bbox.as_ref(),
        )
        .map_err(PipelineError::BadPhoto)?;
        let region = match &query.bbox {
            Some(bbox) => crop(
                &photo,
                &bbox.scaled(1.0 / f64::from(reduction)),
                self.margin,
            )
            .map_err(PipelineError::BadBox)?,
            None => photo,
        };
        let decoded = Instant::now();
        let mut vector = self
            .embedder
            .embed_images(std::slice::from_ref(&region))?
            .pop()
            .ok_or_else(|| PipelineError::BadQuery("the model returned no vector".to_string()))?;
        let embedded = Instant::now();
        let metric = query.metric.unwrap_or(self.metric);
        let filter = Filter {
            categories: query.categories.clone(),
            products: BTreeSet::new(),
        };
        if let (Some(expansion), Metric::Cosine) = (self.expansion, metric) {
            vector = expand_in_index(&self.index, &vector, expansion, &filter)?;
        }
        let request = SearchRequest {
            k: query.k,
            metric,
            filter,
            // Exact: the catalogue of a shop is small, and exact answers are reproducible.
            mode: SearchMode::Exact,
        };
        let hits = match self.consensus {
            Some(consensus) => consensus::search(&self.index, &vector, &request, consensus)?,
            None => self.index.search(&vector, &request)?,
        };
        let searched = Instant::now();
        Ok(QueryAnswer {
            hits,
            metric,
            crop: region,
            timings: Timings {
                decode: (decoded - started).as_secs_f64(),
                embed: (embedded - decoded).as_secs_f64(),
                search: (searched - embedded).as_secs_f64(),
            },
        })
    }

    /// Products that look like a catalogue product, from its stored vectors (no re-embedding):
    /// each of its photos queries the index, a product's score is its best over those queries,
    /// and the product itself is left out.
    pub fn similar(
        &self,
        category: &str,
        product: u64,
        k: usize,
        metric: Option<Metric>,
    ) -> Result<Vec<ProductHit>, PipelineError> {
        if k == 0 {
            return Err(PipelineError::BadQuery("k must be at least 1".to_string()));
        }
        let queries: Vec<f32> = self
            .index
            .product_vectors(category, product)
            .into_iter()
            .flat_map(|(_, vector)| vector)
            .collect();
        if queries.is_empty() {
            return Err(PipelineError::UnknownProduct {
                category: category.to_string(),
                product,
            });
        }
        let metric = metric.unwrap_or(self.metric);
        let request = SearchRequest {
            k: k + 1,
            metric,
            filter: Filter::default(),
            mode: SearchMode::Exact,
        };
        let mut best: Vec<ProductHit> = Vec::new();
        for hits in self.index.search_batch(&queries, &request)? {
            for hit in hits {
                if hit.category == category && hit.product == product {
                    continue;
                }
                match best
                    .iter_mut()
                    .find(|b| b.category == hit.category && b.product == hit.product)
                {
                    Some(existing) => {
                        if better(metric, hit.score, existing.score) {
                            *existing = hit;
                        }
                    }
                    None => best.push(hit),
                }
            }
        }
        best.sort_by(|a, b| {
            let order = a.score.total_cmp(&b.score);
            let order = if metric.higher_is_better() {
                order.reverse()
            } else {
                order
            };
            order
                .then_with(|| a.category.cmp(&b.category))
                .then_with(|| a.product.cmp(&b.product))
        });
        best.truncate(k);
        Ok(best)
    }
}

fn better(metric: Metric, a: f32, b: f32) -> bool {
    if metric.higher_is_better() {
        a > b
    } else {
        a < b
    }
}

/// A score turned into a similarity where higher is closer, for display: `1 - d` for the cosine
/// distance, the inner product itself, and `1 / (1 + d)` for the other distances.
pub fn similarity(metric: Metric, score: f32) -> f32 {
    match metric {
        Metric::Cosine => 1.0 - score,
        Metric::InnerProduct => score,
        _ => 1.0 / (1.0 + score.max(0.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn similarity_is_higher_for_closer_matches() {
        assert!((similarity(Metric::Cosine, 0.25) - 0.75).abs() < 1e-6);
        assert_eq!(similarity(Metric::InnerProduct, 3.0), 3.0);
        assert!(similarity(Metric::Euclidean, 0.5) > similarity(Metric::Euclidean, 2.0));
        assert_eq!(similarity(Metric::Manhattan, 0.0), 1.0);
    }

    #[test]
    fn better_follows_the_metric_direction() {
        assert!(better(Metric::Cosine, 0.1, 0.2));
        assert!(better(Metric::InnerProduct, 0.3, 0.2));
    }
}
