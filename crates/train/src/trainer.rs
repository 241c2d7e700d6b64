//! Metric learning of the head's projection with candle's autograd.
//!
//! The projection starts from the learned whitening and is fine-tuned on batches of training
//! products: one street view and one shop view of each, plus shop photos of other products as
//! extra negatives (half of them the hardest ones for the current head). The loss is computed
//! on the similarity the head will serve, `w · raw + (1 − w) · learned`:
//!
//! - InfoNCE from street to shop and from shop to street (the exact product);
//! - a supervised contrastive term over the batch with products of the same category as
//!   positives, so that the head keeps garments of a kind together (what real, unseen
//!   photos need);
//! - a distillation term that keeps the batch's similarity distribution near the raw
//!   features' one, so that the head does not forget what ImageNet features know.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var, D};
use serde::{Deserialize, Serialize};
use wtb_embed::unit_rows;

use crate::data::{ItemKind, Part, SplitMix64, TrainingSet};
use crate::features::Features;
use crate::validate::{Scores, ValidationSplit};
use crate::whiten::Whitening;
use crate::TrainError;

/// Settings of the metric learning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeadOptions {
    /// Passes over the training products (0: the whitening alone, the default: on the dev
    /// sets metric learning from the whitening did not beat it on held-out products).
    pub epochs: usize,
    /// Products per batch.
    pub batch_products: usize,
    /// Extra shop photos of other products per batch, as negatives.
    pub negatives: usize,
    /// Fraction of the extra negatives that are mined (hardest for the current head).
    pub hard_fraction: f64,
    /// AdamW learning rate, relative to the root mean square of the whitening's entries
    /// (whose scale depends on the data: Adam's steps are absolute).
    pub learning_rate: f64,
    /// AdamW decoupled weight decay (toward zero).
    pub weight_decay: f64,
    /// Pull of the projection back toward the whitening it started from.
    pub anchor_weight: f64,
    /// Softmax temperature of the InfoNCE terms.
    pub temperature: f64,
    /// Weight of the category-level supervised contrastive term.
    pub category_weight: f64,
    /// Weight of the distillation toward the raw similarities.
    pub distill_weight: f64,
    /// Weight `w` of the raw features in the served similarity.
    pub raw_weight: f32,
    /// Seed of batching and mining.
    pub seed: u64,
}

impl Default for HeadOptions {
    fn default() -> Self {
        HeadOptions {
            epochs: 0,
            batch_products: 128,
            negatives: 256,
            hard_fraction: 0.5,
            learning_rate: 1e-2,
            weight_decay: 0.0,
            anchor_weight: 0.0,
            temperature: 0.05,
            category_weight: 0.2,
            distill_weight: 0.0,
            raw_weight: 0.5,
            seed: 7,
        }
    }
}

/// What one epoch did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EpochLog {
    /// 1-based epoch.
    pub epoch: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Validation figures after the epoch.
    pub validation: Scores,
}

/// Where training stands: what a checkpoint holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainState {
    /// Epochs done.
    pub epoch: usize,
    /// Current projection (`dim × input`).
    pub projection: Vec<f32>,
    /// AdamW first moments.
    pub first_moment: Vec<f32>,
    /// AdamW second moments.
    pub second_moment: Vec<f32>,
    /// The batching generator's state.
    pub rng: u64,
    /// The best projection so far and its epoch (0: the whitening).
    pub best: (usize, Vec<f32>),
    /// The per-epoch log so far.
    pub log: Vec<EpochLog>,
}

/// The rows of the features that training draws from.
pub(crate) struct Rows {
    /// Per training product: its street rows and shop rows.
    products: Vec<(Vec<usize>, Vec<usize>, usize)>,
    /// Shop rows usable as negatives (training and distractor products), with their product.
    negatives: Vec<(usize, usize)>,
    /// Category index of every row.
    category: Vec<usize>,
}

impl Rows {
    pub(crate) fn new(set: &TrainingSet, features: &Features) -> Rows {
        let mut by_product: BTreeMap<&wtb_dataset::ProductKey, (Vec<usize>, Vec<usize>)> =
            BTreeMap::new();
        let mut product_index: BTreeMap<&wtb_dataset::ProductKey, usize> = BTreeMap::new();
        let mut categories: BTreeMap<&str, usize> = BTreeMap::new();
        let mut category = Vec::with_capacity(features.len());
        let mut negatives = Vec::new();
        for row in 0..features.len() {
            let item = &set.items[features.item[row]];
            let next = categories.len();
            category.push(
                *categories
                    .entry(item.product.category.as_str())
                    .or_insert(next),
            );
            let next = product_index.len();
            let product = *product_index.entry(&item.product).or_insert(next);
            if item.part == Part::Validation {
                continue;
            }
            if item.kind == ItemKind::Shop {
                negatives.push((row, product));
            }
            if item.part == Part::Train {
                let entry = by_product.entry(&item.product).or_default();
                match item.kind {
                    ItemKind::Street => entry.0.push(row),
                    ItemKind::Shop => entry.1.push(row),
                }
            }
        }
        let products = by_product
            .into_iter()
            .filter(|(_, (street, shop))| !street.is_empty() && !shop.is_empty())
            .map(|(key, (street, shop))| (street, shop, product_index[key]))
            .collect();
        Rows {
            products,
            negatives,
            category,
        }
    }

    /// Matching (street, shop) and (shop, shop) row pairs of training products, for the
    /// whitening.
    pub(crate) fn matching_pairs(&self, features: &Features) -> Vec<(usize, usize)> {
        let mut pairs = Vec::new();
        for (street, shop, _) in &self.products {
            for &s in street {
                for &g in shop {
                    pairs.push((s, g));
                }
            }
            for (i, &a) in shop.iter().enumerate() {
                for &b in &shop[i + 1..] {
                    if features.item[a] != features.item[b] {
                        pairs.push((a, b));
                    }
                }
            }
        }
        pairs
    }

    /// Number of training products that have both street and shop rows.
    pub(crate) fn products(&self) -> usize {
        self.products.len()
    }
}

/// Everything the training loop needs, already on the device.
pub(crate) struct Problem<'a> {
    pub set: &'a TrainingSet,
    pub features: &'a Features,
    /// Transformed inputs (signed power, unit length), `rows × input`.
    pub inputs: Tensor,
    /// Unit-length raw features, `rows × input`.
    pub raw: Tensor,
    pub mean: Tensor,
    pub rows: &'a Rows,
    pub validation: &'a ValidationSplit,
}

/// Unit-length served descriptors of `rows` for `projection` (`dim × input`).
fn descriptors(
    problem: &Problem<'_>,
    projection: &Tensor,
    rows: &Tensor,
    raw_weight: f32,
) -> candle_core::Result<Tensor> {
    let x = problem.inputs.index_select(rows, 0)?;
    let learned = unit_rows(&x.broadcast_sub(&problem.mean)?.matmul(&projection.t()?)?)?;
    if raw_weight > 0.0 {
        let raw = problem.raw.index_select(rows, 0)?;
        Tensor::cat(
            &[
                (raw * f64::from(raw_weight.sqrt()))?,
                (learned * f64::from((1.0 - raw_weight).sqrt()))?,
            ],
            1,
        )
    } else {
        Ok(learned)
    }
}

fn row_tensor(rows: &[usize], device: &Device) -> candle_core::Result<Tensor> {
    let indices: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
    Tensor::from_vec(indices, rows.len(), device)
}

/// Validation figures of a projection.
pub(crate) fn validate(
    problem: &Problem<'_>,
    projection: &Tensor,
    raw_weight: f32,
) -> Result<Scores, TrainError> {
    let all: Vec<usize> = (0..problem.features.len()).collect();
    let rows = row_tensor(&all, problem.inputs.device())?;
    let d = descriptors(problem, projection, &rows, raw_weight)?;
    let dim = d.dim(1)?;
    let values: Vec<f32> = d.flatten_all()?.to_vec1()?;
    Ok(problem
        .validation
        .score(problem.set, problem.features, &values, dim))
}

/// Mean cross-entropy of `logits` (`n × m`) against one target column per row.
fn cross_entropy(logits: &Tensor, targets: &[u32]) -> candle_core::Result<Tensor> {
    let targets = Tensor::from_slice(targets, targets.len(), logits.device())?;
    candle_nn::loss::cross_entropy(logits, &targets)
}

/// Supervised contrastive loss of unit vectors `z` (`n × d`) with `labels`: each row's
/// positives are the other rows with its label.
fn supervised_contrastive(
    z: &Tensor,
    labels: &[usize],
    temperature: f64,
) -> candle_core::Result<Option<Tensor>> {
    let n = labels.len();
    let mut positive = vec![0f32; n * n];
    let mut self_mask = vec![0f32; n * n];
    let mut anchors = 0usize;
    for i in 0..n {
        let mut any = false;
        for j in 0..n {
            if i != j && labels[i] == labels[j] {
                positive[i * n + j] = 1.0;
                any = true;
            }
        }
        anchors += usize::from(any);
        self_mask[i * n + i] = -1e9;
    }
    if anchors == 0 {
        return Ok(None);
    }
    let device = z.device();
    let positive = Tensor::from_vec(positive, (n, n), device)?;
    let self_mask = Tensor::from_vec(self_mask, (n, n), device)?;
    let logits = ((z.matmul(&z.t()?)? / temperature)? + self_mask)?;
    let log_probability = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let counts = positive.sum_keepdim(1)?.clamp(1f32, f32::MAX)?;
    let per_anchor = (log_probability * &positive)?
        .sum_keepdim(1)?
        .broadcast_div(&counts)?;
    Ok(Some((per_anchor.sum_all()? * (-1.0 / anchors as f64))?))
}

/// Hard negatives for the batch: for each batch product's street row, the shop rows of other
/// products that the current head ranks highest.
fn mine_hard(
    problem: &Problem<'_>,
    projection: &Tensor,
    raw_weight: f32,
    street_rows: &[usize],
    batch_products: &[usize],
    wanted: usize,
) -> Result<Vec<usize>, TrainError> {
    if wanted == 0 || problem.rows.negatives.is_empty() {
        return Ok(Vec::new());
    }
    let device = problem.inputs.device();
    let negative_rows: Vec<usize> = problem.rows.negatives.iter().map(|&(r, _)| r).collect();
    let q = descriptors(
        problem,
        projection,
        &row_tensor(street_rows, device)?,
        raw_weight,
    )?;
    let g = descriptors(
        problem,
        projection,
        &row_tensor(&negative_rows, device)?,
        raw_weight,
    )?;
    let similarity: Vec<Vec<f32>> = q.matmul(&g.t()?)?.to_vec2()?;
    let in_batch: std::collections::HashSet<usize> = batch_products.iter().copied().collect();
    let per_query = wanted.div_ceil(street_rows.len().max(1)).max(1);
    let mut chosen = Vec::new();
    let mut taken = std::collections::HashSet::new();
    for (qi, row) in similarity.iter().enumerate() {
        let category = problem.rows.category[street_rows[qi]];
        let mut order: Vec<usize> = (0..row.len())
            .filter(|&j| {
                let (r, product) = problem.rows.negatives[j];
                !in_batch.contains(&product) && problem.rows.category[r] == category
            })
            .collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
        for j in order.into_iter().take(per_query) {
            if taken.insert(j) {
                chosen.push(problem.rows.negatives[j].0);
            }
        }
    }
    chosen.truncate(wanted);
    Ok(chosen)
}

/// One AdamW step on `param` with gradient `grad`, its moments updated in place (bias
/// corrected, decoupled weight decay, as candle-nn's AdamW), at step `t` (from 1).
#[allow(clippy::too_many_arguments)]
fn adamw_step(
    param: &Var,
    grad: &Tensor,
    first: &Var,
    second: &Var,
    t: usize,
    learning_rate: f64,
    weight_decay: f64,
) -> candle_core::Result<()> {
    let (beta1, beta2, eps) = (0.9f64, 0.999f64, 1e-8f64);
    let m = ((first.as_tensor() * beta1)? + (grad * (1.0 - beta1))?)?;
    let v = ((second.as_tensor() * beta2)? + (grad.sqr()? * (1.0 - beta2))?)?;
    let m_hat = (&m / (1.0 - beta1.powi(t as i32)))?;
    let v_hat = (&v / (1.0 - beta2.powi(t as i32)))?;
    let decayed = (param.as_tensor() * (1.0 - learning_rate * weight_decay))?;
    let update = ((m_hat / (v_hat.sqrt()? + eps)?)? * learning_rate)?;
    param.set(&(decayed - update)?)?;
    first.set(&m)?;
    second.set(&v)?;
    Ok(())
}

/// Runs the epochs from `state.epoch` to `options.epochs`, calling `on_epoch` after each
/// (which may save a checkpoint).
pub(crate) fn run(
    problem: &Problem<'_>,
    whitening: &Whitening,
    options: &HeadOptions,
    mut state: TrainState,
    on_epoch: &mut dyn FnMut(&TrainState) -> Result<(), TrainError>,
) -> Result<TrainState, TrainError> {
    let device = problem.inputs.device().clone();
    let input = problem.features.dim;
    let dim = whitening.dim;
    let shape = (dim, input);
    let param = Var::from_tensor(&Tensor::from_slice(&state.projection, shape, &device)?)?;
    let first = Var::from_tensor(&Tensor::from_slice(&state.first_moment, shape, &device)?)?;
    let second = Var::from_tensor(&Tensor::from_slice(&state.second_moment, shape, &device)?)?;
    let anchor = Tensor::from_slice(&whitening.projection, shape, &device)?;
    let rms = (whitening
        .projection
        .iter()
        .map(|v| f64::from(*v).powi(2))
        .sum::<f64>()
        / whitening.projection.len().max(1) as f64)
        .sqrt();
    let learning_rate = options.learning_rate * rms;
    let mut rng = SplitMix64(state.rng);
    let products = problem.rows.products();
    let batch = options.batch_products.clamp(2, products.max(2));
    let steps_per_epoch = products.div_ceil(batch);
    let mut best_value = state
        .log
        .iter()
        .find(|l| l.epoch == state.best.0)
        .map(|l| l.validation.selection_value())
        .unwrap_or(f64::NEG_INFINITY);
    if state.epoch == 0 {
        let start = validate(problem, &anchor, options.raw_weight)?;
        best_value = start.selection_value();
    }

    while state.epoch < options.epochs {
        let mut order: Vec<usize> = (0..products).collect();
        rng.shuffle(&mut order);
        let mut loss_sum = 0.0;
        let mut steps = 0usize;
        for chunk in order.chunks(batch) {
            if chunk.len() < 2 {
                continue;
            }
            let mut street_rows = Vec::with_capacity(chunk.len());
            let mut shop_rows = Vec::with_capacity(chunk.len());
            let mut batch_products = Vec::with_capacity(chunk.len());
            for &p in chunk {
                let (street, shop, product) = &problem.rows.products[p];
                street_rows.push(street[rng.below(street.len())]);
                shop_rows.push(shop[rng.below(shop.len())]);
                batch_products.push(*product);
            }
            let hard_wanted = (options.negatives as f64 * options.hard_fraction).round() as usize;
            let mut extra = mine_hard(
                problem,
                param.as_tensor(),
                options.raw_weight,
                &street_rows,
                &batch_products,
                hard_wanted,
            )?;
            let in_batch: std::collections::HashSet<usize> =
                batch_products.iter().copied().collect();
            let mut attempts = 0;
            while extra.len() < options.negatives
                && !problem.rows.negatives.is_empty()
                && attempts < options.negatives * 4
            {
                attempts += 1;
                let (row, product) =
                    problem.rows.negatives[rng.below(problem.rows.negatives.len())];
                if !in_batch.contains(&product) {
                    extra.push(row);
                }
            }

            let n = street_rows.len();
            let street = descriptors(
                problem,
                param.as_tensor(),
                &row_tensor(&street_rows, &device)?,
                options.raw_weight,
            )?;
            let mut gallery_rows = shop_rows.clone();
            gallery_rows.extend(&extra);
            let gallery = descriptors(
                problem,
                param.as_tensor(),
                &row_tensor(&gallery_rows, &device)?,
                options.raw_weight,
            )?;
            let targets: Vec<u32> = (0..n as u32).collect();
            let logits = (street.matmul(&gallery.t()?)? / options.temperature)?;
            let mut loss = cross_entropy(&logits, &targets)?;
            let shop = gallery.narrow(0, 0, n)?;
            let reverse = (shop.matmul(&street.t()?)? / options.temperature)?;
            loss = ((loss + cross_entropy(&reverse, &targets)?)? * 0.5)?;

            let both = Tensor::cat(&[&street, &shop], 0)?;
            if options.category_weight > 0.0 {
                let labels: Vec<usize> = street_rows
                    .iter()
                    .chain(&shop_rows)
                    .map(|&r| problem.rows.category[r])
                    .collect();
                if let Some(term) =
                    supervised_contrastive(&both, &labels, options.temperature * 2.0)?
                {
                    loss = (loss + (term * options.category_weight)?)?;
                }
            }
            if options.distill_weight > 0.0 {
                let mut all_rows = street_rows.clone();
                all_rows.extend(&shop_rows);
                let raw = problem
                    .raw
                    .index_select(&row_tensor(&all_rows, &device)?, 0)?;
                let m = all_rows.len();
                let diagonal = Tensor::eye(m, DType::F32, &device)?;
                let mask = (diagonal * -1e9)?;
                let teacher = candle_nn::ops::softmax(
                    &((raw.matmul(&raw.t()?)? / options.temperature)? + &mask)?,
                    D::Minus1,
                )?
                .detach();
                let student = candle_nn::ops::log_softmax(
                    &((both.matmul(&both.t()?)? / options.temperature)? + &mask)?,
                    D::Minus1,
                )?;
                let term = ((teacher * student)?.sum_all()? * (-1.0 / m as f64))?;
                loss = (loss + (term * options.distill_weight)?)?;
            }
            if options.anchor_weight > 0.0 {
                let drift = (param.as_tensor() - &anchor)?.sqr()?.sum_all()?;
                loss = (loss + (drift * options.anchor_weight)?)?;
            }
            let grads = loss.backward()?;
            let grad = grads
                .get(param.as_tensor())
                .ok_or_else(|| TrainError::Config("the loss does not depend on the head".into()))?;
            steps += 1;
            let t = state.epoch * steps_per_epoch + steps;
            adamw_step(
                &param,
                grad,
                &first,
                &second,
                t,
                learning_rate,
                options.weight_decay,
            )?;
            loss_sum += loss.to_scalar::<f32>()? as f64;
        }
        state.epoch += 1;
        let validation = validate(problem, param.as_tensor(), options.raw_weight)?;
        state.log.push(EpochLog {
            epoch: state.epoch,
            loss: loss_sum / steps.max(1) as f64,
            validation,
        });
        state.projection = param.as_tensor().flatten_all()?.to_vec1()?;
        state.first_moment = first.as_tensor().flatten_all()?.to_vec1()?;
        state.second_moment = second.as_tensor().flatten_all()?.to_vec1()?;
        state.rng = rng.0;
        // Without validation queries every epoch scores alike: keep the last one.
        if validation.selection_value() > best_value || problem.validation.queries.is_empty() {
            best_value = validation.selection_value();
            state.best = (state.epoch, state.projection.clone());
        }
        on_epoch(&state)?;
    }
    Ok(state)
}
