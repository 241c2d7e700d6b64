//! What an evaluation produces, as data: the results per configuration and set, the failure
//! cases, the skipped items and the manifest. `report` writes them to files and `plot` draws
//! them; both read these types, neither knows the other's.

use serde::{Deserialize, Serialize};

use crate::metrics::Summary;

/// One evaluated configuration: a model with its preprocessing and pooling, and a metric.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ConfigLabel {
    /// Model name (`mobilenet_v2`...).
    pub model: String,
    /// Preprocessing name (`squash`, `torchvision`...).
    pub preprocess: String,
    /// Pooling name (`avg`, `gem:3`...).
    pub pooling: String,
    /// Distance metric name (`cosine`...).
    pub metric: String,
    /// Retrieval steps applied (`none`, or `head+flip+dba+qe` and subsets; see
    /// [`crate::runner::Steps`]).
    #[serde(default = "no_steps")]
    pub steps: String,
}

fn no_steps() -> String {
    "none".into()
}

impl ConfigLabel {
    /// `model/preprocess/pooling/metric`, then `+steps` when there are any: the name used in
    /// plots.
    pub fn short(&self) -> String {
        let steps = if self.steps == "none" {
            String::new()
        } else {
            format!(" +{}", self.steps)
        };
        format!(
            "{}/{}/{}/{}{steps}",
            self.model, self.preprocess, self.pooling, self.metric
        )
    }
}

/// The numbers of one configuration on one evaluation set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SetResult {
    /// The configuration.
    pub config: ConfigLabel,
    /// The evaluation set (`validation`, `test`...).
    pub set: String,
    /// Gallery size per category: (category, photos, products), sorted by category.
    pub gallery: Vec<(String, usize, usize)>,
    /// The numbers.
    pub summary: Summary,
}

/// A query the configuration got wrong, with the images to show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FailureCase {
    /// Configuration that failed.
    pub config: ConfigLabel,
    /// Evaluation set.
    pub set: String,
    /// Query id.
    pub query: String,
    /// Query category.
    pub category: String,
    /// What was expected (product id or category).
    pub expected: String,
    /// Rank of the first correct product, if it was ranked at all.
    pub rank: Option<usize>,
    /// Query crop, relative to the report folder.
    pub query_image: Option<String>,
    /// A photo of the expected product, relative to the report folder.
    pub expected_image: Option<String>,
    /// Top returned products: (label, image relative to the report folder, correct?).
    pub returned: Vec<(String, Option<String>, bool)>,
}

/// Something left out of the evaluation, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedItem {
    /// What it is (`query 123`, `gallery photo 456`...).
    pub item: String,
    /// Why it was skipped.
    pub reason: String,
}

/// How a run was made: inputs, seeds, versions, checksums, machine and timings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The command line that produced the run.
    pub command: Vec<String>,
    /// Input paths by role (`labels`, `photos`, `queries`...).
    pub data: Vec<(String, String)>,
    /// Seeds by role (`split`, `bootstrap`).
    pub seeds: Vec<(String, u64)>,
    /// Tool and library versions.
    pub versions: Vec<(String, String)>,
    /// Weights file and sha256 per model.
    pub weights: Vec<(String, String, String)>,
    /// Learned head files used, with their ids.
    #[serde(default)]
    pub heads: Vec<(String, String)>,
    /// Machine description (CPU model, cores, OS).
    pub hardware: Vec<(String, String)>,
    /// Wall-clock seconds per stage.
    pub timings: Vec<(String, f64)>,
}

/// Everything a report folder is made from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Protocol name (`original`, `full`, `category`).
    pub protocol: String,
    /// Paragraphs describing the protocol and its differences from the original.
    pub notes: Vec<String>,
    /// Cut-offs.
    pub ks: Vec<usize>,
    /// One entry per configuration and evaluation set.
    pub results: Vec<SetResult>,
    /// Items left out.
    pub skipped: Vec<SkippedItem>,
    /// Failure cases for `failures.html`.
    pub failures: Vec<FailureCase>,
}
