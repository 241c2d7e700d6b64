//! `wtb search`: the products of an index that look most like a photo.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Args;
use wtb_dataset::{crop, decode_rgb_reduced, BBox, DecodeLimits};
use wtb_embed::DeviceChoice;
use wtb_search::consensus::{self, Consensus, DEFAULT_CONSENSUS};
use wtb_search::rerank::{expand_in_index, Expansion, DEFAULT_EXPANSION};
use wtb_search::{Filter, Metric, SearchMode, SearchRequest};

use crate::index::{embedder_for, load};

#[derive(Args)]
pub struct SearchArgs {
    /// The query photo.
    image: PathBuf,
    /// The index to search.
    #[arg(long)]
    index: PathBuf,
    /// Search only this box of the photo: x,y,w,h in pixels.
    #[arg(long, value_name = "X,Y,W,H")]
    bbox: Option<String>,
    /// Number of products to return.
    #[arg(short, default_value_t = 12)]
    k: usize,
    /// cosine, euclidean, sqeuclidean, inner_product, manhattan or chebyshev.
    #[arg(long, default_value = "cosine")]
    metric: Metric,
    /// Only these categories (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',')]
    category: Vec<String>,
    /// exact, approximate or auto (approximate for big indexes that have an HNSW graph).
    #[arg(long, default_value = "auto")]
    mode: String,
    /// The weights file(s) the index was built with, in model order.
    #[arg(long, value_name = "FILE")]
    weights: Vec<PathBuf>,
    /// Query expansion: add the N nearest shop photos to the query before the search (cosine
    /// only). Default: 2 with a learned head, else 0 (off).
    #[arg(long, value_name = "N")]
    expansion_k: Option<usize>,
    /// Category consensus: the N first products vote for their category and candidates of
    /// the favoured categories move up (0: off).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_CONSENSUS.k)]
    consensus_k: usize,
    /// Category consensus: the similarity a candidate gains when its category has every vote.
    #[arg(long, default_value_t = DEFAULT_CONSENSUS.weight)]
    consensus_weight: f32,
    /// The learned head the index was built with (`wtb index build --head`).
    #[arg(long, value_name = "FILE")]
    head: Option<PathBuf>,
    /// Where the model runs: cpu, cuda, cuda:N or auto.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

fn parse_bbox(text: &str) -> anyhow::Result<BBox> {
    let values: Vec<f64> = text
        .split(',')
        .map(|v| {
            v.trim()
                .parse::<f64>()
                .with_context(|| format!("--bbox {text:?}: {v:?} is not a number"))
        })
        .collect::<anyhow::Result<_>>()?;
    match values[..] {
        [x, y, w, h] => Ok(BBox::new(x, y, w, h)),
        _ => bail!("--bbox {text:?} needs four numbers x,y,w,h"),
    }
}

pub fn run(args: SearchArgs) -> anyhow::Result<ExitCode> {
    let mode = match args.mode.as_str() {
        "auto" => SearchMode::Auto,
        "exact" => SearchMode::Exact,
        "approximate" => SearchMode::Approximate,
        other => bail!("--mode {other:?}: expected auto, exact or approximate"),
    };
    let index = load(&args.index)?;
    let embedder = embedder_for(&index, &args.weights, args.head.clone(), args.device)?;
    let bbox = args.bbox.as_deref().map(parse_bbox).transpose()?;
    // As the shop does: a photo much larger than the model needs is decoded at reduced scale.
    let bytes =
        std::fs::read(&args.image).with_context(|| format!("reading {}", args.image.display()))?;
    let (mut image, reduction) = decode_rgb_reduced(
        &bytes,
        &DecodeLimits::default(),
        embedder.source_side(),
        bbox.as_ref(),
    )
    .with_context(|| format!("reading {}", args.image.display()))?;
    if let Some(bbox) = bbox {
        image = crop(&image, &bbox.scaled(1.0 / f64::from(reduction)), 0.0)
            .with_context(|| format!("cropping {}", args.image.display()))?;
    }
    let vectors = embedder
        .embed_images(&[image])
        .context("embedding the query")?;
    let mut query = vectors
        .into_iter()
        .next()
        .context("the model returned no vector")?;
    let filter = Filter {
        categories: args.category.iter().cloned().collect(),
        ..Filter::default()
    };
    let expansion = match args.expansion_k {
        Some(0) => None,
        Some(k) => Some(Expansion {
            k,
            ..DEFAULT_EXPANSION
        }),
        None => embedder.head().map(|_| DEFAULT_EXPANSION),
    };
    if let (Some(expansion), Metric::Cosine) = (expansion, args.metric) {
        query = expand_in_index(&index, &query, expansion, &filter).context("query expansion")?;
    }
    let request = SearchRequest {
        k: args.k,
        metric: args.metric,
        filter,
        mode,
    };
    let consensus = Consensus {
        k: args.consensus_k,
        weight: args.consensus_weight,
    };
    let hits = consensus::search(&index, &query, &request, consensus).context("searching")?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "image": args.image,
                "metric": args.metric,
                "higher_is_better": args.metric.higher_is_better(),
                "hits": hits,
            }))?
        );
    } else {
        println!(
            "{:>4}  {:<12} {:>10} {:>10}  {}",
            "rank", "category", "product", "photo", args.metric
        );
        for (rank, hit) in hits.iter().enumerate() {
            println!(
                "{:>4}  {:<12} {:>10} {:>10}  {:.6}",
                rank + 1,
                hit.category,
                hit.product,
                hit.photo,
                hit.score
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
