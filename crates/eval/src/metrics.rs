//! Retrieval metrics over ranked gallery photos: accuracy@k over distinct products, mean
//! reciprocal rank, mean average precision, category precision@k and hit@k.
//!
//! A query's ranking is the list of gallery photos, best first, as the search returned it.
//! Two rules make every number independent of how the search broke ties:
//! - **ties count against the query**: within a run of photos with exactly the same score,
//!   the irrelevant photos are taken to come first;
//! - **products are ranked by their best photo**: the product ranking is the photo ranking
//!   with every later photo of an already seen product dropped (the original's dedup).
//!
//! A query whose true product has no photo in the gallery can never be hit: it counts as a
//! miss everywhere and is flagged in [`QueryScore::target_in_gallery`] so reports can say so.

use serde::{Deserialize, Serialize};

/// One gallery photo in a query's ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RankedPhoto {
    /// Photo id.
    pub photo: u64,
    /// Product the photo shows.
    pub product: u64,
    /// Category of the product.
    pub category: String,
    /// Score the search gave it (distance or similarity: only equality matters here).
    pub score: f32,
}

/// What counts as a correct answer for a query.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Target {
    /// The exact product (street2shop protocols).
    Product(u64),
    /// Any product of this category (category benchmarks).
    Category(String),
}

impl Target {
    fn is_relevant(&self, photo: &RankedPhoto) -> bool {
        match self {
            Target::Product(product) => photo.product == *product,
            Target::Category(category) => photo.category == *category,
        }
    }
}

/// A returned product, for failure pages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReturnedProduct {
    /// Product id.
    pub product: u64,
    /// Its best-scoring photo.
    pub photo: u64,
    /// That photo's score.
    pub score: f32,
    /// Whether this product is a correct answer.
    pub relevant: bool,
}

/// Everything the summaries need from one query, computed once from its ranking.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueryScore {
    /// Query id (photo id or path).
    pub query: String,
    /// Query category (the reporting stratum).
    pub category: String,
    /// 1-based rank of the first correct product among distinct products; `None` when no
    /// correct product was ranked.
    pub first_relevant_rank: Option<usize>,
    /// Whether any correct photo was in the ranking at all (false: the product is absent
    /// from the gallery, a guaranteed miss).
    pub target_in_gallery: bool,
    /// Average precision over the photo ranking (every photo of a correct product is
    /// relevant); 0 when none is ranked.
    pub average_precision: f64,
    /// For each k of the evaluation, the number of correct products among the top-k
    /// distinct products.
    pub relevant_products_at_k: Vec<usize>,
    /// The first few distinct products returned (for failure pages).
    pub top: Vec<ReturnedProduct>,
}

/// How many returned products [`score_query`] keeps in [`QueryScore::top`].
pub const TOP_KEPT: usize = 5;

/// Scores one query's ranking against its target for the cut-offs `ks`.
///
/// `ranking` is the gallery photo list, best first; it may be truncated, in which case
/// products beyond it count as not returned.
pub fn score_query(
    query: &str,
    category: &str,
    target: &Target,
    ranking: &[RankedPhoto],
    ks: &[usize],
) -> QueryScore {
    let ordered = pessimistic_order(ranking, target);

    let n_relevant_photos = ordered.iter().filter(|&&(_, rel)| rel).count();
    let mut hits = 0usize;
    let mut precision_sum = 0.0f64;
    for (position, &(_, relevant)) in ordered.iter().enumerate() {
        if relevant {
            hits += 1;
            precision_sum += hits as f64 / (position + 1) as f64;
        }
    }
    let average_precision = if n_relevant_photos == 0 {
        0.0
    } else {
        precision_sum / n_relevant_photos as f64
    };

    let mut seen = std::collections::HashSet::new();
    let mut products: Vec<ReturnedProduct> = Vec::new();
    for &(photo, relevant) in &ordered {
        if seen.insert(photo.product) {
            products.push(ReturnedProduct {
                product: photo.product,
                photo: photo.photo,
                score: photo.score,
                relevant,
            });
        }
    }
    let first_relevant_rank = products.iter().position(|p| p.relevant).map(|i| i + 1);
    let relevant_products_at_k = ks
        .iter()
        .map(|&k| products.iter().take(k).filter(|p| p.relevant).count())
        .collect();
    products.truncate(TOP_KEPT);

    QueryScore {
        query: query.to_string(),
        category: category.to_string(),
        first_relevant_rank,
        target_in_gallery: n_relevant_photos > 0,
        average_precision,
        relevant_products_at_k,
        top: products,
    }
}

/// The ranking with irrelevant photos first inside every run of equal scores.
fn pessimistic_order<'a>(
    ranking: &'a [RankedPhoto],
    target: &Target,
) -> Vec<(&'a RankedPhoto, bool)> {
    let mut ordered: Vec<(&RankedPhoto, bool)> = Vec::with_capacity(ranking.len());
    let mut start = 0;
    while start < ranking.len() {
        let score = ranking[start].score;
        let mut end = start + 1;
        // Bitwise equality: NaN scores form their own runs instead of swallowing neighbours.
        while end < ranking.len() && ranking[end].score.to_bits() == score.to_bits() {
            end += 1;
        }
        let run = &ranking[start..end];
        ordered.extend(
            run.iter()
                .filter(|p| !target.is_relevant(p))
                .map(|p| (p, false)),
        );
        ordered.extend(
            run.iter()
                .filter(|p| target.is_relevant(p))
                .map(|p| (p, true)),
        );
        start = end;
    }
    ordered
}

/// A reported measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Measure {
    /// Exact product among the top-k distinct products.
    AccuracyAt(usize),
    /// Category benchmarks: at least one product of the query's category in the top k.
    HitAt(usize),
    /// Category benchmarks: share of the top-k distinct products in the query's category.
    PrecisionAt(usize),
    /// Mean reciprocal rank of the first correct product.
    Mrr,
    /// Mean average precision over the photo ranking.
    Map,
}

impl Measure {
    /// Short name used in tables and files: `acc@10`, `hit@5`, `prec@5`, `mrr`, `map`.
    pub fn name(&self) -> String {
        match self {
            Measure::AccuracyAt(k) => format!("acc@{k}"),
            Measure::HitAt(k) => format!("hit@{k}"),
            Measure::PrecisionAt(k) => format!("prec@{k}"),
            Measure::Mrr => "mrr".to_string(),
            Measure::Map => "map".to_string(),
        }
    }

    /// The measures reported for exact-product protocols at the cut-offs `ks`.
    pub fn product_measures(ks: &[usize]) -> Vec<Measure> {
        let mut measures: Vec<Measure> = ks.iter().map(|&k| Measure::AccuracyAt(k)).collect();
        measures.extend([Measure::Mrr, Measure::Map]);
        measures
    }

    /// The measures reported for category benchmarks at the cut-offs `ks`.
    pub fn category_measures(ks: &[usize]) -> Vec<Measure> {
        let mut measures: Vec<Measure> = ks.iter().map(|&k| Measure::HitAt(k)).collect();
        measures.extend(ks.iter().map(|&k| Measure::PrecisionAt(k)));
        measures.extend([Measure::Mrr, Measure::Map]);
        measures
    }

    /// This measure's value for one query (the reported number is its mean over queries).
    /// `ks` must be the cut-offs the score was computed with; a k not among them gives 0.
    pub fn value(&self, score: &QueryScore, ks: &[usize]) -> f64 {
        let at = |k: usize| {
            ks.iter()
                .position(|&x| x == k)
                .and_then(|i| score.relevant_products_at_k.get(i).copied())
                .unwrap_or(0)
        };
        match *self {
            Measure::AccuracyAt(k) | Measure::HitAt(k) => f64::from(u8::from(at(k) > 0)),
            Measure::PrecisionAt(k) => {
                if k == 0 {
                    0.0
                } else {
                    at(k) as f64 / k as f64
                }
            }
            Measure::Mrr => score.first_relevant_rank.map_or(0.0, |r| 1.0 / r as f64),
            Measure::Map => score.average_precision,
        }
    }
}

/// A number with its 95% bootstrap confidence interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Estimate {
    /// The value on the actual queries.
    pub value: f64,
    /// 2.5th percentile of the bootstrap replicates.
    pub ci_low: f64,
    /// 97.5th percentile of the bootstrap replicates.
    pub ci_high: f64,
}

/// How per-category numbers are pooled into one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Pooling {
    /// Every query weighs the same.
    Micro,
    /// Every category weighs the same.
    Macro,
}

/// The summary of one evaluated configuration: per category and pooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Cut-offs the scores were computed with.
    pub ks: Vec<usize>,
    /// Reported measures, in order.
    pub measures: Vec<Measure>,
    /// Per category (sorted by name): query count, queries whose target was absent from the
    /// gallery, and one estimate per measure.
    pub categories: Vec<CategorySummary>,
    /// Micro-averaged estimates, one per measure.
    pub micro: Vec<Estimate>,
    /// Macro-averaged estimates, one per measure.
    pub macro_avg: Vec<Estimate>,
    /// Total query count.
    pub n_queries: usize,
    /// Bootstrap settings used.
    pub bootstrap: BootstrapConfig,
}

/// One category's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategorySummary {
    /// Category name.
    pub category: String,
    /// Number of queries.
    pub n_queries: usize,
    /// Queries whose target had no photo in the gallery (counted as misses).
    pub n_target_absent: usize,
    /// One estimate per measure of [`Summary::measures`].
    pub estimates: Vec<Estimate>,
}

/// Bootstrap settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapConfig {
    /// Number of replicates (0 disables the intervals: they then equal the value).
    pub replicates: usize,
    /// Seed of the resampling.
    pub seed: u64,
}

impl Default for BootstrapConfig {
    fn default() -> Self {
        BootstrapConfig {
            replicates: 1000,
            seed: 2018,
        }
    }
}

/// Summarises query scores: the mean of every measure per category, micro and macro, each
/// with a seeded, category-stratified percentile bootstrap 95% interval (queries are
/// resampled with replacement inside their category, so every replicate keeps the category
/// sizes and the macro average stays defined).
pub fn summarize(
    scores: &[QueryScore],
    ks: &[usize],
    measures: &[Measure],
    bootstrap: BootstrapConfig,
) -> Summary {
    let mut names: Vec<&str> = scores.iter().map(|s| s.category.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    // values[c][m][q]: measure m of the q-th query of category c.
    let values: Vec<Vec<Vec<f64>>> = names
        .iter()
        .map(|name| {
            let members: Vec<&QueryScore> = scores.iter().filter(|s| s.category == *name).collect();
            measures
                .iter()
                .map(|m| members.iter().map(|s| m.value(s, ks)).collect())
                .collect()
        })
        .collect();
    let sizes: Vec<usize> = values
        .iter()
        .map(|per_measure| per_measure.first().map_or(0, Vec::len))
        .collect();

    let point = pooled_means(&values, &sizes, measures.len(), None);
    let mut replicates: Vec<Pooled> = Vec::with_capacity(bootstrap.replicates);
    let mut rng = SplitMix64::new(bootstrap.seed);
    for _ in 0..bootstrap.replicates {
        let draws: Vec<Vec<usize>> = sizes
            .iter()
            .map(|&n| (0..n).map(|_| rng.below(n)).collect())
            .collect();
        replicates.push(pooled_means(&values, &sizes, measures.len(), Some(&draws)));
    }

    let interval = |value: f64, pick: &dyn Fn(&Pooled) -> f64| -> Estimate {
        if replicates.is_empty() {
            return Estimate {
                value,
                ci_low: value,
                ci_high: value,
            };
        }
        let mut samples: Vec<f64> = replicates.iter().map(pick).collect();
        samples.sort_by(f64::total_cmp);
        Estimate {
            value,
            ci_low: percentile(&samples, 0.025),
            ci_high: percentile(&samples, 0.975),
        }
    };

    let categories = names
        .iter()
        .enumerate()
        .map(|(c, name)| CategorySummary {
            category: name.to_string(),
            n_queries: sizes[c],
            n_target_absent: scores
                .iter()
                .filter(|s| s.category == *name && !s.target_in_gallery)
                .count(),
            estimates: (0..measures.len())
                .map(|m| interval(point.per_category[c][m], &|r: &Pooled| r.per_category[c][m]))
                .collect(),
        })
        .collect();
    let micro = (0..measures.len())
        .map(|m| interval(point.micro[m], &|r: &Pooled| r.micro[m]))
        .collect();
    let macro_avg = (0..measures.len())
        .map(|m| interval(point.macro_avg[m], &|r: &Pooled| r.macro_avg[m]))
        .collect();

    Summary {
        ks: ks.to_vec(),
        measures: measures.to_vec(),
        categories,
        micro,
        macro_avg,
        n_queries: scores.len(),
        bootstrap,
    }
}

struct Pooled {
    per_category: Vec<Vec<f64>>,
    micro: Vec<f64>,
    macro_avg: Vec<f64>,
}

fn pooled_means(
    values: &[Vec<Vec<f64>>],
    sizes: &[usize],
    n_measures: usize,
    draws: Option<&[Vec<usize>]>,
) -> Pooled {
    let mut per_category = Vec::with_capacity(values.len());
    let mut sums = vec![0.0; n_measures];
    let total: usize = sizes.iter().sum();
    for (c, per_measure) in values.iter().enumerate() {
        let mut means = Vec::with_capacity(n_measures);
        for (m, column) in per_measure.iter().enumerate() {
            let sum: f64 = match draws {
                Some(draws) => draws[c].iter().map(|&q| column[q]).sum(),
                None => column.iter().sum(),
            };
            sums[m] += sum;
            means.push(if sizes[c] == 0 {
                0.0
            } else {
                sum / sizes[c] as f64
            });
        }
        per_category.push(means);
    }
    let micro = sums
        .iter()
        .map(|&s| if total == 0 { 0.0 } else { s / total as f64 })
        .collect();
    let macro_avg = (0..n_measures)
        .map(|m| {
            if per_category.is_empty() {
                0.0
            } else {
                per_category.iter().map(|c| c[m]).sum::<f64>() / per_category.len() as f64
            }
        })
        .collect();
    Pooled {
        per_category,
        micro,
        macro_avg,
    }
}

/// Linear-interpolated percentile of sorted samples.
fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let position = q * (sorted.len() - 1) as f64;
    let low = position.floor() as usize;
    let high = position.ceil() as usize;
    let fraction = position - low as f64;
    sorted[low] + (sorted[high] - sorted[low]) * fraction
}

/// SplitMix64: a tiny, fully specified generator, so bootstrap intervals are reproducible
/// from the seed alone, on every platform and across dependency upgrades.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), by rejection so there is no modulo bias.
    pub(crate) fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let x = self.next_u64();
            if x < zone {
                return (x % n) as usize;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo(photo: u64, product: u64, category: &str, score: f32) -> RankedPhoto {
        RankedPhoto {
            photo,
            product,
            category: category.to_string(),
            score,
        }
    }

    const KS: [usize; 3] = [1, 2, 3];

    #[test]
    fn exact_product_hit_at_rank_two_over_distinct_products() {
        // Product 7 has two photos ahead of the target: they count once.
        let ranking = vec![
            photo(1, 7, "tops", 0.1),
            photo(2, 7, "tops", 0.2),
            photo(3, 9, "tops", 0.3),
            photo(4, 8, "tops", 0.4),
        ];
        let s = score_query("q", "tops", &Target::Product(9), &ranking, &KS);
        assert_eq!(s.first_relevant_rank, Some(2));
        assert_eq!(s.relevant_products_at_k, vec![0, 1, 1]);
        assert_eq!(Measure::AccuracyAt(1).value(&s, &KS), 0.0);
        assert_eq!(Measure::AccuracyAt(2).value(&s, &KS), 1.0);
        assert!((Measure::Mrr.value(&s, &KS) - 0.5).abs() < 1e-12);
        // AP over photos: the only relevant photo is third.
        assert!((s.average_precision - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(s.top.len(), 3);
        assert!(s.target_in_gallery);
    }

    #[test]
    fn product_with_several_photos_counts_once_and_ap_uses_all_photos() {
        let ranking = vec![
            photo(1, 5, "dresses", 0.1),
            photo(2, 6, "dresses", 0.2),
            photo(3, 5, "dresses", 0.3),
            photo(4, 6, "dresses", 0.4),
            photo(5, 5, "dresses", 0.5),
        ];
        let s = score_query("q", "dresses", &Target::Product(5), &ranking, &KS);
        assert_eq!(s.first_relevant_rank, Some(1));
        assert_eq!(s.relevant_products_at_k, vec![1, 1, 1]);
        // Relevant at positions 1, 3, 5: (1/1 + 2/3 + 3/5) / 3.
        let expected = (1.0 + 2.0 / 3.0 + 3.0 / 5.0) / 3.0;
        assert!((s.average_precision - expected).abs() < 1e-12);
        assert_eq!(
            s.top.iter().map(|p| p.product).collect::<Vec<_>>(),
            vec![5, 6]
        );
    }

    #[test]
    fn ties_count_against_the_query() {
        // The target ties with two other products for first place: pessimistic rank 3.
        let ranking = vec![
            photo(1, 9, "tops", 0.5),
            photo(2, 1, "tops", 0.5),
            photo(3, 2, "tops", 0.5),
            photo(4, 3, "tops", 0.9),
        ];
        let s = score_query("q", "tops", &Target::Product(9), &ranking, &KS);
        assert_eq!(s.first_relevant_rank, Some(3));
        assert_eq!(s.relevant_products_at_k, vec![0, 0, 1]);
        assert!((s.average_precision - 1.0 / 3.0).abs() < 1e-12);
        // Same ties in another input order give the same answer.
        let mut shuffled = ranking.clone();
        shuffled.swap(0, 2);
        let again = score_query("q", "tops", &Target::Product(9), &shuffled, &KS);
        assert_eq!(again.first_relevant_rank, s.first_relevant_rank);
        assert_eq!(again.average_precision, s.average_precision);
        assert_eq!(again.relevant_products_at_k, s.relevant_products_at_k);
    }

    #[test]
    fn absent_product_is_a_reported_miss() {
        let ranking = vec![photo(1, 1, "tops", 0.1), photo(2, 2, "tops", 0.2)];
        let s = score_query("q", "tops", &Target::Product(42), &ranking, &KS);
        assert_eq!(s.first_relevant_rank, None);
        assert!(!s.target_in_gallery);
        assert_eq!(s.average_precision, 0.0);
        for m in Measure::product_measures(&KS) {
            assert_eq!(m.value(&s, &KS), 0.0, "{}", m.name());
        }
        let summary = summarize(
            &[s],
            &KS,
            &Measure::product_measures(&KS),
            BootstrapConfig::default(),
        );
        assert_eq!(summary.categories[0].n_target_absent, 1);
        assert_eq!(summary.micro[0].value, 0.0);
    }

    #[test]
    fn category_precision_and_hit() {
        let ranking = vec![
            photo(1, 1, "pants", 0.1),
            photo(2, 2, "tops", 0.2),
            photo(3, 3, "tops", 0.3),
            photo(4, 3, "tops", 0.35),
        ];
        let target = Target::Category("tops".into());
        let s = score_query("q", "tops", &target, &ranking, &KS);
        assert_eq!(s.relevant_products_at_k, vec![0, 1, 2]);
        assert_eq!(Measure::HitAt(1).value(&s, &KS), 0.0);
        assert_eq!(Measure::HitAt(2).value(&s, &KS), 1.0);
        assert!((Measure::PrecisionAt(3).value(&s, &KS) - 2.0 / 3.0).abs() < 1e-12);
        assert!((Measure::Mrr.value(&s, &KS) - 0.5).abs() < 1e-12);
        // Relevant photos at 2, 3, 4: (1/2 + 2/3 + 3/4) / 3.
        let expected = (0.5 + 2.0 / 3.0 + 0.75) / 3.0;
        assert!((s.average_precision - expected).abs() < 1e-12);
    }

    fn hit_score(category: &str, rank: Option<usize>) -> QueryScore {
        QueryScore {
            query: "q".into(),
            category: category.into(),
            first_relevant_rank: rank,
            target_in_gallery: true,
            average_precision: rank.map_or(0.0, |r| 1.0 / r as f64),
            relevant_products_at_k: KS
                .iter()
                .map(|&k| usize::from(rank.is_some_and(|r| r <= k)))
                .collect(),
            top: vec![],
        }
    }

    #[test]
    fn micro_and_macro_differ_when_categories_differ_in_size() {
        // tops: 3 of 4 hit at 1; dresses: 0 of 1.
        let mut scores: Vec<QueryScore> = (0..3).map(|_| hit_score("tops", Some(1))).collect();
        scores.push(hit_score("tops", None));
        scores.push(hit_score("dresses", Some(5)));
        let measures = [Measure::AccuracyAt(1)];
        let summary = summarize(&scores, &KS, &measures, BootstrapConfig::default());
        assert_eq!(summary.categories[0].category, "dresses");
        assert_eq!(summary.categories[1].estimates[0].value, 0.75);
        assert!((summary.micro[0].value - 0.6).abs() < 1e-12);
        assert!((summary.macro_avg[0].value - 0.375).abs() < 1e-12);
        let ci = summary.categories[1].estimates[0];
        assert!(ci.ci_low <= 0.75 && 0.75 <= ci.ci_high && ci.ci_low < ci.ci_high);
        // A category of one query has no spread.
        let d = summary.categories[0].estimates[0];
        assert_eq!((d.ci_low, d.ci_high), (0.0, 0.0));
    }

    #[test]
    fn bootstrap_is_seeded() {
        let scores: Vec<QueryScore> = (0..40)
            .map(|i| hit_score("tops", if i % 3 == 0 { Some(1) } else { Some(3) }))
            .collect();
        let measures = Measure::product_measures(&KS);
        let a = summarize(
            &scores,
            &KS,
            &measures,
            BootstrapConfig {
                replicates: 200,
                seed: 1,
            },
        );
        let b = summarize(
            &scores,
            &KS,
            &measures,
            BootstrapConfig {
                replicates: 200,
                seed: 1,
            },
        );
        let c = summarize(
            &scores,
            &KS,
            &measures,
            BootstrapConfig {
                replicates: 200,
                seed: 2,
            },
        );
        assert_eq!(a, b);
        assert_ne!(a.micro, c.micro);
        for e in &a.micro {
            assert!(e.ci_low <= e.value && e.value <= e.ci_high);
        }
    }

    #[test]
    fn percentile_interpolates() {
        let s = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(percentile(&s, 0.5), 2.0);
        assert!((percentile(&s, 0.025) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = SplitMix64::new(3);
        let mut seen = [false; 7];
        for _ in 0..500 {
            seen[rng.below(7)] = true;
        }
        assert!(seen.iter().all(|&s| s));
    }
}
