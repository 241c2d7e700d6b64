//! A matrix of gallery vectors (f32 or f16 storage, owned or memory-mapped) and exact k-NN.

use std::sync::Arc;

use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::kernels;
use crate::metric::{cosine_from_dot, rank_key, Metric};
use crate::topk::{Entry, TopK};
use crate::SearchError;

/// How gallery vectors are stored. Scores are always computed in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// 4 bytes per value.
    #[default]
    F32,
    /// 2 bytes per value (IEEE half): half the memory traffic, about 3 significant digits.
    F16,
}

impl Precision {
    /// Bytes per stored value.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::F16 => 2,
        }
    }
}

/// One exact search result: a gallery position and its score under the metric.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Neighbor {
    /// Row of the gallery.
    pub position: usize,
    /// Distance or similarity, see [`Metric`].
    pub score: f32,
}

#[derive(Clone)]
enum Rows {
    F32(Arc<Vec<f32>>),
    F16(Arc<Vec<f16>>),
    /// `len` values starting `offset` bytes into a read-only map, aligned for the type.
    Mapped {
        map: Arc<memmap2::Mmap>,
        offset: usize,
        values: usize,
        precision: Precision,
    },
}

/// Which rows may be returned and how rows group into products (for dedup).
#[derive(Clone, Copy, Default)]
pub(crate) struct Selection<'a> {
    /// Group (product ordinal) of each row; when set, one result per group.
    pub groups: Option<&'a [u32]>,
    /// Rows that may be returned; `None` allows all.
    pub allowed: Option<&'a [bool]>,
}

/// Refuses a zero dimension and values that do not fill whole rows of `dim`.
pub(crate) fn check_rows(values: &[f32], dim: usize) -> Result<(), SearchError> {
    if dim == 0 {
        return Err(SearchError::ZeroDimension);
    }
    if !values.len().is_multiple_of(dim) {
        return Err(SearchError::RaggedMatrix {
            values: values.len(),
            dim,
        });
    }
    Ok(())
}

/// Rows scanned per block: small enough that a block of scores for a batch of queries stays in
/// the core's L2 cache, large enough for the matrix product to run at full speed.
const BLOCK_ROWS: usize = 256;
/// From this many queries on, dot-product metrics go through a GEMM instead of per-row kernels.
const GEMM_MIN_QUERIES: usize = 4;

/// A dense matrix of `len` vectors of dimension `dim`, with their squared norms.
///
/// Cheap to clone (storage is shared).
#[derive(Clone)]
pub struct Gallery {
    dim: usize,
    len: usize,
    rows: Rows,
    sq_norms: Arc<Vec<f32>>,
    norms: Arc<Vec<f32>>,
}

impl std::fmt::Debug for Gallery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gallery")
            .field("len", &self.len)
            .field("dim", &self.dim)
            .field("precision", &self.precision())
            .finish()
    }
}

impl Gallery {
    /// A gallery from row-major values (`values.len()` must be a multiple of `dim`).
    pub fn new(dim: usize, values: Vec<f32>, precision: Precision) -> Result<Gallery, SearchError> {
        check_rows(&values, dim)?;
        let len = values.len() / dim;
        let rows = match precision {
            Precision::F32 => Rows::F32(Arc::new(values)),
            Precision::F16 => {
                let mut half = vec![f16::ZERO; values.len()];
                half.convert_from_f32_slice(&values);
                Rows::F16(Arc::new(half))
            }
        };
        let mut gallery = Gallery {
            dim,
            len,
            rows,
            sq_norms: Arc::new(Vec::new()),
            norms: Arc::new(Vec::new()),
        };
        let sq_norms = gallery.compute_sq_norms();
        gallery.set_norms(sq_norms);
        Ok(gallery)
    }

    /// A gallery over `len * dim` values stored in `map` from byte `offset` on, with the squared
    /// norms already known (they are stored beside the matrix in index files).
    pub(crate) fn mapped(
        map: Arc<memmap2::Mmap>,
        offset: usize,
        len: usize,
        dim: usize,
        precision: Precision,
        sq_norms: Vec<f32>,
    ) -> Result<Gallery, String> {
        let values = len
            .checked_mul(dim)
            .ok_or_else(|| "matrix size overflows".to_string())?;
        let end = values
            .checked_mul(precision.bytes())
            .and_then(|b| b.checked_add(offset))
            .ok_or_else(|| "matrix size overflows".to_string())?;
        if end > map.len() {
            return Err(format!(
                "matrix needs bytes {offset}..{end} but the file has {}",
                map.len()
            ));
        }
        if !(map.as_ptr() as usize + offset).is_multiple_of(precision.bytes()) {
            return Err(format!("matrix offset {offset} is not aligned"));
        }
        if sq_norms.len() != len {
            return Err(format!("{} norms for {len} rows", sq_norms.len()));
        }
        let mut gallery = Gallery {
            dim,
            len,
            rows: Rows::Mapped {
                map,
                offset,
                values,
                precision,
            },
            sq_norms: Arc::new(Vec::new()),
            norms: Arc::new(Vec::new()),
        };
        gallery.set_norms(sq_norms);
        Ok(gallery)
    }

    fn set_norms(&mut self, sq_norms: Vec<f32>) {
        self.norms = Arc::new(sq_norms.iter().map(|s| s.sqrt()).collect());
        self.sq_norms = Arc::new(sq_norms);
    }

    fn compute_sq_norms(&self) -> Vec<f32> {
        let mut row = Vec::new();
        (0..self.len)
            .map(|i| {
                let r = self.row_f32(i, &mut row);
                kernels::dot(r, r)
            })
            .collect()
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the gallery holds no vector.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Dimension of every vector.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Storage precision.
    pub fn precision(&self) -> Precision {
        match &self.rows {
            Rows::F32(_) => Precision::F32,
            Rows::F16(_) => Precision::F16,
            Rows::Mapped { precision, .. } => *precision,
        }
    }

    /// Squared L2 norm of every row (as stored, i.e. after f16 rounding).
    pub(crate) fn sq_norms(&self) -> &[f32] {
        &self.sq_norms
    }

    pub(crate) fn f32_values(&self) -> Option<&[f32]> {
        match &self.rows {
            Rows::F32(v) => Some(v),
            Rows::Mapped {
                map,
                offset,
                values,
                precision: Precision::F32,
            } => {
                // SAFETY: bounds and alignment were checked in `mapped`; the map is read-only
                // and lives as long as `self`.
                Some(unsafe {
                    std::slice::from_raw_parts(map.as_ptr().add(*offset) as *const f32, *values)
                })
            }
            _ => None,
        }
    }

    pub(crate) fn f16_values(&self) -> Option<&[f16]> {
        match &self.rows {
            Rows::F16(v) => Some(v),
            Rows::Mapped {
                map,
                offset,
                values,
                precision: Precision::F16,
            } => {
                // SAFETY: as in `f32_values`; f16 is a transparent u16.
                Some(unsafe {
                    std::slice::from_raw_parts(map.as_ptr().add(*offset) as *const f16, *values)
                })
            }
            _ => None,
        }
    }

    /// The stored bytes of the matrix (native little-endian layout), for writing index files.
    pub(crate) fn value_bytes(&self) -> &[u8] {
        if let Some(v) = self.f32_values() {
            // SAFETY: any f32 slice is a valid byte slice of 4x the length.
            unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 4) }
        } else if let Some(v) = self.f16_values() {
            // SAFETY: as above, 2 bytes per f16.
            unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u8, v.len() * 2) }
        } else {
            &[]
        }
    }

    /// Row `i` as f32, converted into `buf` when stored as f16. `i` must be `< len`.
    pub fn row_f32<'a>(&'a self, i: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
        let range = i * self.dim..(i + 1) * self.dim;
        if let Some(v) = self.f32_values() {
            return &v[range];
        }
        let src = &self.f16_values().unwrap_or(&[])[range];
        buf.resize(src.len(), 0.0);
        src.convert_to_f32_slice(buf);
        buf
    }

    /// Rows `start..end` as f32 (converted into `buf` for f16 storage).
    fn block_f32<'a>(&'a self, start: usize, end: usize, buf: &'a mut Vec<f32>) -> &'a [f32] {
        let range = start * self.dim..end * self.dim;
        if let Some(v) = self.f32_values() {
            return &v[range];
        }
        let src = &self.f16_values().unwrap_or(&[])[range];
        buf.resize(src.len(), 0.0);
        src.convert_to_f32_slice(buf);
        buf
    }

    /// The `k` nearest rows to `query`, best first; ties go to the smaller position.
    pub fn knn(
        &self,
        query: &[f32],
        k: usize,
        metric: Metric,
    ) -> Result<Vec<Neighbor>, SearchError> {
        let mut all = self.knn_batch(query, k, metric)?;
        Ok(all.pop().unwrap_or_default())
    }

    /// The `k` nearest rows to each query of the row-major batch `queries` (`Q * dim` values).
    pub fn knn_batch(
        &self,
        queries: &[f32],
        k: usize,
        metric: Metric,
    ) -> Result<Vec<Vec<Neighbor>>, SearchError> {
        let found = self.select(queries, k, metric, Selection::default())?;
        Ok(found
            .into_iter()
            .map(|entries| {
                entries
                    .into_iter()
                    .map(|e| Neighbor {
                        position: e.pos,
                        score: e.score,
                    })
                    .collect()
            })
            .collect())
    }

    /// Exact selection for a batch of queries, with optional grouping and row filter.
    pub(crate) fn select(
        &self,
        queries: &[f32],
        k: usize,
        metric: Metric,
        selection: Selection<'_>,
    ) -> Result<Vec<Vec<Entry>>, SearchError> {
        if !queries.len().is_multiple_of(self.dim) {
            return Err(SearchError::DimensionMismatch {
                expected: self.dim,
                found: queries.len(),
            });
        }
        let n_queries = queries.len() / self.dim;
        if let Some(groups) = selection.groups {
            if groups.len() != self.len {
                return Err(SearchError::Internal(format!(
                    "{} groups for {} rows",
                    groups.len(),
                    self.len
                )));
            }
        }
        if let Some(allowed) = selection.allowed {
            if allowed.len() != self.len {
                return Err(SearchError::Internal(format!(
                    "{} filter flags for {} rows",
                    allowed.len(),
                    self.len
                )));
            }
        }
        let grouped = selection.groups.is_some();
        if n_queries == 0 {
            return Ok(Vec::new());
        }
        if k == 0 || self.len == 0 {
            return Ok(vec![Vec::new(); n_queries]);
        }
        let query_norms: Vec<(f32, f32)> = queries
            .chunks_exact(self.dim)
            .map(|q| {
                let sq = kernels::dot(q, q);
                (sq, sq.sqrt())
            })
            .collect();
        let context = ScanContext {
            gallery: self,
            queries,
            n_queries,
            query_norms: &query_norms,
            metric,
            selection,
            k,
        };
        // A few tasks per thread keep both cores busy when one task ends early.
        let blocks = self.len.div_ceil(BLOCK_ROWS);
        let tasks = (rayon::current_num_threads() * 4).clamp(1, blocks);
        let blocks_per_task = blocks.div_ceil(tasks);
        let merged = (0..tasks)
            .into_par_iter()
            .map(|task| {
                let start = (task * blocks_per_task * BLOCK_ROWS).min(self.len);
                let end = ((task + 1) * blocks_per_task * BLOCK_ROWS).min(self.len);
                context.scan(start, end, grouped)
            })
            .reduce_with(|mut left, right| {
                for (l, r) in left.iter_mut().zip(right) {
                    l.merge(r);
                }
                left
            })
            .unwrap_or_default();
        Ok(merged.into_iter().map(TopK::into_sorted).collect())
    }
}

/// Below this share of `|q|² + |r|²`, a distance from the dot-product expansion has lost
/// about three decimal digits to cancellation and is recomputed from the vectors.
const CANCELLATION_GUARD: f32 = 1.0 / 1024.0;

struct ScanContext<'a> {
    gallery: &'a Gallery,
    queries: &'a [f32],
    n_queries: usize,
    query_norms: &'a [(f32, f32)],
    metric: Metric,
    selection: Selection<'a>,
    k: usize,
}

impl ScanContext<'_> {
    fn scan(&self, start: usize, end: usize, grouped: bool) -> Vec<TopK> {
        let gallery = self.gallery;
        let dim = gallery.dim;
        let mut tops: Vec<TopK> = (0..self.n_queries)
            .map(|_| TopK::new(self.k, grouped))
            .collect();
        let mut converted = Vec::new();
        let mut row_buf = Vec::new();
        let mut scores = vec![0f32; self.n_queries * BLOCK_ROWS];
        let use_gemm = self.metric.uses_dot() && self.n_queries >= GEMM_MIN_QUERIES;
        let mut block_start = start;
        while block_start < end {
            let block_end = (block_start + BLOCK_ROWS).min(end);
            let nb = block_end - block_start;
            let scores = &mut scores[..self.n_queries * nb];
            let half_rows = gallery
                .f16_values()
                .filter(|_| self.metric.uses_dot() && !use_gemm);
            if let Some(half_rows) = half_rows {
                // Few queries on f16 storage: read the halves directly (half the memory
                // traffic of converting the block first).
                let half_block = &half_rows[block_start * dim..block_end * dim];
                for (qi, query) in self.queries.chunks_exact(dim).enumerate() {
                    let out = &mut scores[qi * nb..(qi + 1) * nb];
                    for (row, score) in half_block.chunks_exact(dim).zip(out.iter_mut()) {
                        *score = kernels::dot_f16(query, row, &mut converted);
                    }
                }
            } else if use_gemm {
                let block = gallery.block_f32(block_start, block_end, &mut converted);
                gemm_dots(self.queries, self.n_queries, block, nb, dim, scores);
            } else {
                let block = gallery.block_f32(block_start, block_end, &mut converted);
                for (qi, query) in self.queries.chunks_exact(dim).enumerate() {
                    let out = &mut scores[qi * nb..(qi + 1) * nb];
                    for (row, score) in block.chunks_exact(dim).zip(out.iter_mut()) {
                        *score = match self.metric {
                            Metric::Manhattan => kernels::l1(query, row),
                            Metric::Chebyshev => kernels::linf(query, row),
                            _ => kernels::dot(query, row),
                        };
                    }
                }
            }
            for (qi, top) in tops.iter_mut().enumerate() {
                let (q_sq, q_norm) = self.query_norms[qi];
                let mut bound = top.key_bound();
                for (j, &raw) in scores[qi * nb..(qi + 1) * nb].iter().enumerate() {
                    let pos = block_start + j;
                    let score = match self.metric {
                        Metric::InnerProduct | Metric::Manhattan | Metric::Chebyshev => raw,
                        Metric::Cosine => cosine_from_dot(raw, q_norm, gallery.norms[pos]),
                        Metric::SqEuclidean | Metric::Euclidean => {
                            let norms = q_sq + gallery.sq_norms[pos];
                            let mut sq = (norms - 2.0 * raw).max(0.0);
                            // Near-duplicates cancel almost all digits of the expansion (a
                            // true 1e-8 comes out as 6e-8, or 2.4e-4 after the square root),
                            // so recompute those few rows directly.
                            if sq < norms * CANCELLATION_GUARD && !raw.is_nan() {
                                let query = &self.queries[qi * dim..(qi + 1) * dim];
                                sq = kernels::sq_l2(query, gallery.row_f32(pos, &mut row_buf));
                            }
                            if self.metric == Metric::Euclidean {
                                sq.sqrt()
                            } else {
                                sq
                            }
                        }
                    };
                    // NaN survives `max(0.0)` as 0.0 in Rust, so restore it: a NaN dot product
                    // must rank last, not first.
                    let score = if raw.is_nan() { f32::NAN } else { score };
                    let key = rank_key(self.metric, score);
                    if key > bound {
                        continue;
                    }
                    if let Some(allowed) = self.selection.allowed {
                        if !allowed[pos] {
                            continue;
                        }
                    }
                    let group = self.selection.groups.map_or(0, |g| g[pos]);
                    top.offer(Entry {
                        key,
                        pos,
                        group,
                        score,
                    });
                    bound = top.key_bound();
                }
            }
            block_start = block_end;
        }
        tops
    }
}

/// `scores[q][j] = queries[q] . block[j]` through a single-threaded GEMM (the caller runs one
/// per core on different blocks).
fn gemm_dots(
    queries: &[f32],
    n_queries: usize,
    block: &[f32],
    nb: usize,
    dim: usize,
    scores: &mut [f32],
) {
    debug_assert_eq!(queries.len(), n_queries * dim);
    debug_assert_eq!(block.len(), nb * dim);
    debug_assert_eq!(scores.len(), n_queries * nb);
    // SAFETY: the three buffers have exactly the sizes described by the shapes and strides
    // (checked above in debug builds, guaranteed by the callers), and `scores` is exclusive.
    unsafe {
        gemm::gemm(
            n_queries,
            nb,
            dim,
            scores.as_mut_ptr(),
            1,
            nb as isize,
            false,
            queries.as_ptr(),
            1,
            dim as isize,
            block.as_ptr(),
            dim as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}
