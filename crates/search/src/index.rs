//! The on-disk index: photos with their product keys, vectors in segments, tombstones, and
//! one versioned, checksummed file loaded by memory map.
//!
//! File layout (little-endian):
//!
//! | bytes | what |
//! |---|---|
//! | 0..8 | magic `WTBINDX\0` |
//! | 8..12 | format version (u32) |
//! | 12..16 | header length H (u32) |
//! | 16..16+H | header (JSON): dimension, precision, embedding metadata, categories, section offsets |
//! | 64-aligned | per segment: matrix (f32/f16 rows), squared norms (f32) |
//! | 64-aligned | columns over all rows: photo ids (u64), product ids (u64), category ids (u32), deleted flags (u8) |
//! | 64-aligned | optional approximate-index (HNSW) blob |
//! | last 32 | SHA-256 of every byte before it |

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::gallery::{Gallery, Precision, Selection};
use crate::hnsw::Hnsw;
use crate::topk::{Entry, TopK};
use crate::{Filter, Metric, ProductHit, SearchError, SearchMode, SearchRequest, VectorSearch};

/// From this many live photos on, [`SearchMode::Auto`] uses the HNSW graph (when the index has
/// one). Below it an exact cosine scan reads at most 50,000 x 1280 x 4 bytes = 256 MB, a few
/// milliseconds at this machine's memory bandwidth, and is always right.
pub const APPROXIMATE_MIN_PHOTOS: usize = 50_000;
/// Fewest HNSW candidates fetched per approximate query (before exact rescoring and dedup).
const EXPANSION_SEARCH_FLOOR: usize = 128;

/// Version of the file format written by this crate; other versions are refused.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"WTBINDX\0";
const ALIGN: usize = 64;
const CHECKSUM_LEN: usize = 32;

/// One photo of the gallery: which product of which category it shows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PhotoRecord {
    /// Category of the product.
    pub category: String,
    /// Product id (unique within its category only).
    pub product: u64,
    /// Photo id. A photo may show several products (one row each); a (photo, category,
    /// product) item is unique among live rows.
    pub photo: u64,
}

/// Summary of one segment.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SegmentInfo {
    /// Rows stored in the segment.
    pub rows: usize,
    /// Rows of the segment marked deleted.
    pub deleted: usize,
}

/// Summary of an index, for `wtb index info` and for logs.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct IndexInfo {
    /// File format version.
    pub format_version: u32,
    /// Vector dimension.
    pub dim: usize,
    /// Storage precision.
    pub precision: Precision,
    /// Live photos.
    pub photos: usize,
    /// Rows marked deleted, waiting for compaction.
    pub deleted: usize,
    /// Distinct live (category, product) keys.
    pub products: usize,
    /// Live photos per category.
    pub photos_per_category: BTreeMap<String, usize>,
    /// Segments, oldest first.
    pub segments: Vec<SegmentInfo>,
    /// Embedding metadata given when the index was created.
    pub meta: BTreeMap<String, String>,
}

/// A gallery of product photos: vectors in segments plus per-row photo, product and category,
/// with tombstones for deleted rows. Search returns one hit per (category, product).
pub struct Index {
    dim: usize,
    precision: Precision,
    meta: BTreeMap<String, String>,
    segments: Vec<Gallery>,
    categories: Vec<String>,
    category_ids: Vec<u32>,
    products: Vec<u64>,
    photos: Vec<u64>,
    deleted: Vec<bool>,
    /// Dense ordinal of each row's (category, product): the dedup group.
    product_ordinals: Vec<u32>,
    ordinal_of: HashMap<(u32, u64), u32>,
    /// Live (photo, category id, product) items.
    live_items: HashSet<(u64, u32, u64)>,
    approximate: Option<Hnsw>,
}

impl std::fmt::Debug for Index {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Index")
            .field("dim", &self.dim)
            .field("photos", &self.live_items.len())
            .field("rows", &self.photos.len())
            .field("segments", &self.segments.len())
            .field("approximate", &self.approximate.is_some())
            .finish()
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Header {
    format: String,
    dim: usize,
    precision: Precision,
    meta: BTreeMap<String, String>,
    categories: Vec<String>,
    rows: usize,
    segments: Vec<SegmentHeader>,
    photos_offset: usize,
    products_offset: usize,
    category_ids_offset: usize,
    deleted_offset: usize,
    /// (offset, length) of the serialised HNSW graph, if any.
    approximate: Option<(usize, usize)>,
    file_len: usize,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct SegmentHeader {
    rows: usize,
    matrix_offset: usize,
    norms_offset: usize,
}

impl Index {
    /// An empty index for vectors of dimension `dim`, tagged with the embedding metadata
    /// (model, weights hash, preprocessing...) that `load` will check.
    pub fn new(
        dim: usize,
        precision: Precision,
        meta: BTreeMap<String, String>,
    ) -> Result<Index, SearchError> {
        if dim == 0 {
            return Err(SearchError::ZeroDimension);
        }
        Ok(Index {
            dim,
            precision,
            meta,
            segments: Vec::new(),
            categories: Vec::new(),
            category_ids: Vec::new(),
            products: Vec::new(),
            photos: Vec::new(),
            deleted: Vec::new(),
            product_ordinals: Vec::new(),
            ordinal_of: HashMap::new(),
            live_items: HashSet::new(),
            approximate: None,
        })
    }

    /// The embedding metadata of the index.
    pub fn meta(&self) -> &BTreeMap<String, String> {
        &self.meta
    }

    /// Storage precision of the vectors.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The ids of the photos with at least one live row.
    pub fn live_photos(&self) -> HashSet<u64> {
        self.live_items.iter().map(|(photo, _, _)| *photo).collect()
    }

    /// Adds photos (row-major `vectors`, one row per record) as a new segment.
    ///
    /// Refuses the whole batch if a (photo, category, product) item is already live or repeats
    /// within the batch.
    pub fn add(&mut self, records: &[PhotoRecord], vectors: &[f32]) -> Result<(), SearchError> {
        if !vectors.len().is_multiple_of(self.dim) {
            return Err(SearchError::DimensionMismatch {
                expected: self.dim,
                found: vectors.len(),
            });
        }
        if vectors.len() / self.dim != records.len() {
            return Err(SearchError::RecordCount {
                records: records.len(),
                vectors: vectors.len() / self.dim,
            });
        }
        let mut batch = HashSet::new();
        for record in records {
            let live = self
                .categories
                .iter()
                .position(|c| *c == record.category)
                .is_some_and(|id| {
                    self.live_items
                        .contains(&(record.photo, id as u32, record.product))
                });
            if live || !batch.insert((record.photo, record.category.as_str(), record.product)) {
                return Err(SearchError::DuplicatePhoto {
                    photo: record.photo,
                    category: record.category.clone(),
                    product: record.product,
                });
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        let gallery = Gallery::new(self.dim, vectors.to_vec(), self.precision)?;
        for record in records {
            let category = match self.categories.iter().position(|c| *c == record.category) {
                Some(id) => id as u32,
                None => {
                    self.categories.push(record.category.clone());
                    (self.categories.len() - 1) as u32
                }
            };
            self.push_row(category, record.product, record.photo, false);
        }
        if let Some(graph) = &self.approximate {
            use rayon::prelude::*;
            let first = (self.photos.len() - records.len()) as u64;
            graph.add(
                vectors
                    .par_chunks_exact(self.dim)
                    .enumerate()
                    .map(|(i, v)| (first + i as u64, v)),
            )?;
        }
        self.segments.push(gallery);
        Ok(())
    }

    fn push_row(&mut self, category: u32, product: u64, photo: u64, deleted: bool) {
        let next = self.ordinal_of.len() as u32;
        let ordinal = *self.ordinal_of.entry((category, product)).or_insert(next);
        self.category_ids.push(category);
        self.products.push(product);
        self.photos.push(photo);
        self.deleted.push(deleted);
        self.product_ordinals.push(ordinal);
        if !deleted {
            self.live_items.insert((photo, category, product));
        }
    }

    /// Marks every live photo of these (category, product) keys deleted; returns how many.
    pub fn remove_products(&mut self, keys: &[(String, u64)]) -> Result<usize, SearchError> {
        let wanted: HashSet<(u32, u64)> = keys
            .iter()
            .filter_map(|(category, product)| {
                let id = self.categories.iter().position(|c| c == category)?;
                Some((id as u32, *product))
            })
            .collect();
        let rows: Vec<usize> = (0..self.photos.len())
            .filter(|&row| {
                !self.deleted[row] && wanted.contains(&(self.category_ids[row], self.products[row]))
            })
            .collect();
        self.delete_rows(&rows)
    }

    /// Marks every live row of these photos deleted; returns how many rows.
    pub fn remove_photos(&mut self, photos: &[u64]) -> Result<usize, SearchError> {
        let wanted: HashSet<u64> = photos.iter().copied().collect();
        let rows: Vec<usize> = (0..self.photos.len())
            .filter(|&row| !self.deleted[row] && wanted.contains(&self.photos[row]))
            .collect();
        self.delete_rows(&rows)
    }

    fn delete_rows(&mut self, rows: &[usize]) -> Result<usize, SearchError> {
        for &row in rows {
            if let Some(graph) = &self.approximate {
                graph.remove(row as u64)?;
            }
            self.deleted[row] = true;
            self.live_items
                .remove(&(self.photos[row], self.category_ids[row], self.products[row]));
        }
        Ok(rows.len())
    }

    /// Whether the index carries an HNSW graph for approximate cosine search.
    pub fn has_approximate(&self) -> bool {
        self.approximate.is_some()
    }

    /// Builds the HNSW graph over the live photos (minutes for 100k photos on 2 cores); from
    /// then on `add`, `remove_*` and `compact` keep it up to date and `save` stores it.
    pub fn build_approximate(&mut self) -> Result<(), SearchError> {
        use rayon::prelude::*;
        let graph = Hnsw::new(self.dim)?;
        let mut start = 0;
        for segment in &self.segments {
            let converted;
            let values = match segment.f32_values() {
                Some(v) => v,
                None => {
                    let mut buf = Vec::new();
                    converted = (0..segment.len())
                        .flat_map(|i| segment.row_f32(i, &mut buf).to_vec())
                        .collect::<Vec<f32>>();
                    &converted
                }
            };
            let deleted = &self.deleted[start..start + segment.len()];
            graph.add(
                values
                    .par_chunks_exact(self.dim)
                    .enumerate()
                    .filter(|(i, _)| !deleted[*i])
                    .map(|(i, v)| ((start + i) as u64, v)),
            )?;
            start += segment.len();
        }
        self.approximate = Some(graph);
        Ok(())
    }

    /// Rewrites the index as one segment without deleted rows (row order is kept).
    pub fn compact(&mut self) -> Result<(), SearchError> {
        let mut values = Vec::with_capacity(self.len() * self.dim);
        let mut buf = Vec::new();
        let mut kept = Vec::new();
        let mut row = 0;
        for segment in &self.segments {
            for i in 0..segment.len() {
                if !self.deleted[row] {
                    values.extend_from_slice(segment.row_f32(i, &mut buf));
                    kept.push(row);
                }
                row += 1;
            }
        }
        let mut fresh = Index::new(self.dim, self.precision, self.meta.clone())?;
        // Categories keep their ids; only those still used survive.
        let used: HashSet<u32> = kept.iter().map(|&r| self.category_ids[r]).collect();
        let mut remap = HashMap::new();
        for (id, name) in self.categories.iter().enumerate() {
            if used.contains(&(id as u32)) {
                remap.insert(id as u32, fresh.categories.len() as u32);
                fresh.categories.push(name.clone());
            }
        }
        for &r in &kept {
            let category = remap.get(&self.category_ids[r]).copied().unwrap_or(0);
            fresh.push_row(category, self.products[r], self.photos[r], false);
        }
        if !kept.is_empty() {
            // Values were stored at this precision already, so re-encoding is lossless.
            fresh
                .segments
                .push(Gallery::new(self.dim, values, self.precision)?);
        }
        if let Some(graph) = self.approximate.take() {
            // Rows only move down and deleted rows left the graph already, so renaming in
            // ascending order never lands on a key still in use.
            for (new, &old) in kept.iter().enumerate() {
                if new != old {
                    graph.rename(old as u64, new as u64)?;
                }
            }
            fresh.approximate = Some(graph);
        }
        *self = fresh;
        Ok(())
    }

    /// A summary of the index.
    pub fn info(&self) -> IndexInfo {
        let mut photos_per_category = BTreeMap::new();
        let mut products = HashSet::new();
        for row in 0..self.photos.len() {
            if !self.deleted[row] {
                let category = &self.categories[self.category_ids[row] as usize];
                *photos_per_category.entry(category.clone()).or_insert(0) += 1;
                products.insert(self.product_ordinals[row]);
            }
        }
        let mut segments = Vec::new();
        let mut start = 0;
        for segment in &self.segments {
            let end = start + segment.len();
            segments.push(SegmentInfo {
                rows: segment.len(),
                deleted: self.deleted[start..end].iter().filter(|d| **d).count(),
            });
            start = end;
        }
        IndexInfo {
            format_version: FORMAT_VERSION,
            dim: self.dim,
            precision: self.precision,
            photos: self.len(),
            deleted: self.photos.len() - self.len(),
            products: products.len(),
            photos_per_category,
            segments,
            meta: self.meta.clone(),
        }
    }

    /// The live photos, in row order.
    pub fn records(&self) -> Vec<PhotoRecord> {
        (0..self.photos.len())
            .filter(|&row| !self.deleted[row])
            .map(|row| self.record(row))
            .collect()
    }

    /// The stored vectors of a product's live photos, as `(photo, vector)` in row order, for
    /// item-to-item search without re-embedding. With f16 storage the values are the rounded
    /// ones. Empty when the index holds no such product.
    pub fn product_vectors(&self, category: &str, product: u64) -> Vec<(u64, Vec<f32>)> {
        let Some(category_id) = self.categories.iter().position(|c| c == category) else {
            return Vec::new();
        };
        let mut buf = Vec::new();
        (0..self.photos.len())
            .filter(|&row| {
                !self.deleted[row]
                    && self.products[row] == product
                    && self.category_ids[row] as usize == category_id
            })
            .filter_map(|row| {
                let (segment, local) = self.locate(row)?;
                Some((self.photos[row], segment.row_f32(local, &mut buf).to_vec()))
            })
            .collect()
    }

    fn record(&self, row: usize) -> PhotoRecord {
        PhotoRecord {
            category: self.categories[self.category_ids[row] as usize].clone(),
            product: self.products[row],
            photo: self.photos[row],
        }
    }

    fn allowed_rows(&self, filter: &Filter) -> Vec<bool> {
        let category_ok: Vec<bool> = self
            .categories
            .iter()
            .map(|c| filter.categories.is_empty() || filter.categories.contains(c))
            .collect();
        (0..self.photos.len())
            .map(|row| {
                !self.deleted[row]
                    && category_ok[self.category_ids[row] as usize]
                    && (filter.products.is_empty()
                        || filter.allows(
                            &self.categories[self.category_ids[row] as usize],
                            self.products[row],
                        ))
            })
            .collect()
    }

    fn use_approximate(&self, request: &SearchRequest) -> Result<bool, SearchError> {
        let usable = self.approximate.is_some() && request.metric == Metric::Cosine;
        match request.mode {
            SearchMode::Exact => Ok(false),
            SearchMode::Auto => Ok(usable && self.len() >= APPROXIMATE_MIN_PHOTOS),
            SearchMode::Approximate if usable => Ok(true),
            SearchMode::Approximate => {
                Err(SearchError::Approximate(if self.approximate.is_none() {
                    "this index has no HNSW graph (build it first)".to_string()
                } else {
                    format!("the HNSW graph serves cosine only, not {}", request.metric)
                }))
            }
        }
    }

    /// HNSW candidates, rescored exactly and deduplicated by product; widens the candidate
    /// list until k distinct products are found or the graph is exhausted.
    fn approximate_search(
        &self,
        query: &[f32],
        request: &SearchRequest,
    ) -> Result<Vec<ProductHit>, SearchError> {
        let Some(graph) = &self.approximate else {
            return Err(SearchError::Internal(
                "approximate search without a graph".into(),
            ));
        };
        if query.len() != self.dim {
            return Err(SearchError::DimensionMismatch {
                expected: self.dim,
                found: query.len(),
            });
        }
        let allowed = if request.filter.is_empty() {
            None
        } else {
            Some(self.allowed_rows(&request.filter))
        };
        let query_norm = crate::kernels::dot(query, query).sqrt();
        let mut count = (request.k * 4).max(EXPANSION_SEARCH_FLOOR);
        let mut buf = Vec::new();
        loop {
            let keys = graph.search(query, count, |key| {
                allowed
                    .as_ref()
                    .is_none_or(|a| a.get(key as usize).copied().unwrap_or(false))
            })?;
            let mut top = TopK::new(request.k, true);
            for &key in &keys {
                let row = key as usize;
                let Some((segment, local)) = self.locate(row) else {
                    return Err(SearchError::Internal(format!(
                        "graph key {key} is not a row"
                    )));
                };
                let vector = segment.row_f32(local, &mut buf);
                let score = crate::metric::cosine_from_dot(
                    crate::kernels::dot(query, vector),
                    query_norm,
                    segment.sq_norms()[local].sqrt(),
                );
                top.offer(Entry {
                    key: crate::metric::rank_key(Metric::Cosine, score),
                    pos: row,
                    group: self.product_ordinals[row],
                    score,
                });
            }
            let entries = top.into_sorted();
            if entries.len() >= request.k || keys.len() < count || count >= self.len() {
                return Ok(entries
                    .into_iter()
                    .map(|e| {
                        let record = self.record(e.pos);
                        ProductHit {
                            category: record.category,
                            product: record.product,
                            photo: record.photo,
                            score: e.score,
                        }
                    })
                    .collect());
            }
            count *= 4;
        }
    }

    /// The `k` photos nearest to `query` under `metric` (exact, any product, best first) that
    /// `filter` allows, with their stored vectors: the neighbours query expansion adds.
    pub fn nearest_photos(
        &self,
        query: &[f32],
        k: usize,
        metric: Metric,
        filter: &Filter,
    ) -> Result<Vec<(PhotoRecord, f32, Vec<f32>)>, SearchError> {
        if query.len() != self.dim {
            return Err(SearchError::DimensionMismatch {
                expected: self.dim,
                found: query.len(),
            });
        }
        let allowed = self.allowed_rows(filter);
        let mut top = TopK::new(k, false);
        let mut start = 0;
        for segment in &self.segments {
            let end = start + segment.len();
            let selection = Selection {
                groups: None,
                allowed: Some(&allowed[start..end]),
            };
            for found in segment.select(query, k, metric, selection)? {
                for entry in found {
                    top.offer(Entry {
                        pos: entry.pos + start,
                        ..entry
                    });
                }
            }
            start = end;
        }
        let mut buf = Vec::new();
        Ok(top
            .into_sorted()
            .into_iter()
            .filter_map(|e| {
                let (segment, local) = self.locate(e.pos)?;
                let vector = segment.row_f32(local, &mut buf).to_vec();
                Some((self.record(e.pos), e.score, vector))
            })
            .collect())
    }

    fn locate(&self, row: usize) -> Option<(&Gallery, usize)> {
        let mut start = 0;
        for segment in &self.segments {
            if row < start + segment.len() {
                return Some((segment, row - start));
            }
            start += segment.len();
        }
        None
    }

    fn exact(
        &self,
        queries: &[f32],
        request: &SearchRequest,
    ) -> Result<Vec<Vec<ProductHit>>, SearchError> {
        if !queries.len().is_multiple_of(self.dim) {
            return Err(SearchError::DimensionMismatch {
                expected: self.dim,
                found: queries.len(),
            });
        }
        let n_queries = queries.len() / self.dim;
        let allowed = self.allowed_rows(&request.filter);
        let mut tops: Vec<TopK> = (0..n_queries).map(|_| TopK::new(request.k, true)).collect();
        let mut start = 0;
        for segment in &self.segments {
            let end = start + segment.len();
            let selection = Selection {
                groups: Some(&self.product_ordinals[start..end]),
                allowed: Some(&allowed[start..end]),
            };
            let found = segment.select(queries, request.k, request.metric, selection)?;
            for (top, entries) in tops.iter_mut().zip(found) {
                for entry in entries {
                    top.offer(Entry {
                        pos: entry.pos + start,
                        ..entry
                    });
                }
            }
            start = end;
        }
        Ok(tops
            .into_iter()
            .map(|top| {
                top.into_sorted()
                    .into_iter()
                    .map(|e| {
                        let record = self.record(e.pos);
                        ProductHit {
                            category: record.category,
                            product: record.product,
                            photo: record.photo,
                            score: e.score,
                        }
                    })
                    .collect()
            })
            .collect())
    }

    /// Writes the index to `path` atomically (temporary file in the same folder, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<(), SearchError> {
        let io = |source| SearchError::Io {
            path: path.to_path_buf(),
            source,
        };
        let rows = self.photos.len();
        let mut cursor = 0usize;
        let mut place = |bytes: usize| {
            let at = cursor;
            cursor = (cursor + bytes).div_ceil(ALIGN) * ALIGN;
            at
        };
        let segments: Vec<SegmentHeader> = self
            .segments
            .iter()
            .map(|s| SegmentHeader {
                rows: s.len(),
                matrix_offset: place(s.value_bytes().len()),
                norms_offset: place(s.len() * 4),
            })
            .collect();
        let photos_offset = place(rows * 8);
        let products_offset = place(rows * 8);
        let category_ids_offset = place(rows * 4);
        let deleted_offset = place(rows);
        let graph_bytes = match &self.approximate {
            Some(graph) => Some(graph.to_bytes()?),
            None => None,
        };
        let approximate = graph_bytes.as_ref().map(|b| (place(b.len()), b.len()));
        let data_len = cursor;
        let mut header = Header {
            format: "wtb-index".to_string(),
            dim: self.dim,
            precision: self.precision,
            meta: self.meta.clone(),
            categories: self.categories.clone(),
            rows,
            segments,
            photos_offset,
            products_offset,
            category_ids_offset,
            deleted_offset,
            approximate,
            file_len: 0,
        };
        // The header's own length enters file_len; its digit count can change its length, so
        // settle it in two passes.
        let mut header_json =
            serde_json::to_vec(&header).map_err(|e| SearchError::Internal(e.to_string()))?;
        for _ in 0..2 {
            let data_start = (16 + header_json.len()).div_ceil(ALIGN) * ALIGN;
            header.file_len = data_start + data_len + CHECKSUM_LEN;
            header_json =
                serde_json::to_vec(&header).map_err(|e| SearchError::Internal(e.to_string()))?;
        }
        let data_start = (16 + header_json.len()).div_ceil(ALIGN) * ALIGN;
        if data_start + data_len + CHECKSUM_LEN != header.file_len {
            return Err(SearchError::Internal(
                "index header length did not settle".into(),
            ));
        }

        let mut writer = AtomicFile::create(path).map_err(io)?;
        let mut out = HashingWriter {
            inner: std::io::BufWriter::with_capacity(1 << 20, writer.file()),
            hasher: Sha256::new(),
            written: 0,
        };
        let result: std::io::Result<()> = (|| {
            out.write_all(MAGIC)?;
            out.write_all(&FORMAT_VERSION.to_le_bytes())?;
            out.write_all(&(header_json.len() as u32).to_le_bytes())?;
            out.write_all(&header_json)?;
            out.pad_to(data_start)?;
            for (segment, sh) in self.segments.iter().zip(&header.segments) {
                out.pad_to(data_start + sh.matrix_offset)?;
                out.write_all(segment.value_bytes())?;
                out.pad_to(data_start + sh.norms_offset)?;
                for v in segment.sq_norms() {
                    out.write_all(&v.to_le_bytes())?;
                }
            }
            out.pad_to(data_start + photos_offset)?;
            for v in &self.photos {
                out.write_all(&v.to_le_bytes())?;
            }
            out.pad_to(data_start + products_offset)?;
            for v in &self.products {
                out.write_all(&v.to_le_bytes())?;
            }
            out.pad_to(data_start + category_ids_offset)?;
            for v in &self.category_ids {
                out.write_all(&v.to_le_bytes())?;
            }
            out.pad_to(data_start + deleted_offset)?;
            let flags: Vec<u8> = self.deleted.iter().map(|d| u8::from(*d)).collect();
            out.write_all(&flags)?;
            if let (Some(bytes), Some((offset, _))) = (&graph_bytes, approximate) {
                out.pad_to(data_start + offset)?;
                out.write_all(bytes)?;
            }
            out.pad_to(data_start + data_len)?;
            let digest = out.hasher.clone().finalize();
            out.inner.write_all(&digest)?;
            out.inner.flush()?;
            Ok(())
        })();
        drop(out);
        result.map_err(io)?;
        writer.commit().map_err(io)
    }

    /// Opens an index file by memory map, verifying its format version and checksum, and,
    /// when `expected_meta` is given, that it was built with that embedding.
    pub fn load(
        path: &Path,
        expected_meta: Option<&BTreeMap<String, String>>,
    ) -> Result<Index, SearchError> {
        let corrupt = |reason: String| SearchError::Corrupt {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|source| SearchError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the map is read-only; the index files we write are replaced by rename, never
        // modified in place, so the mapped bytes do not change under us.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| SearchError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let map = Arc::new(map);
        let bytes: &[u8] = &map;
        if bytes.len() < 16 {
            return Err(corrupt(format!(
                "file is only {} bytes (truncated?)",
                bytes.len()
            )));
        }
        if &bytes[..8] != MAGIC {
            return Err(corrupt("missing the WTBINDX signature".into()));
        }
        let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        if version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {version}, this program reads version {FORMAT_VERSION}"
            )));
        }
        let header_len = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]) as usize;
        let header_bytes = bytes.get(16..16 + header_len).ok_or_else(|| {
            corrupt(format!(
                "file is {} bytes, shorter than its header (truncated)",
                bytes.len()
            ))
        })?;
        let header: Header = serde_json::from_slice(header_bytes)
            .map_err(|e| corrupt(format!("unreadable header: {e}")))?;
        if header.file_len != bytes.len() {
            return Err(corrupt(format!(
                "file is {} bytes but its header says {} (truncated or appended to)",
                bytes.len(),
                header.file_len
            )));
        }
        let body_len = bytes.len() - CHECKSUM_LEN;
        let digest = Sha256::digest(&bytes[..body_len]);
        if digest.as_slice() != &bytes[body_len..] {
            return Err(corrupt("checksum mismatch (the file is corrupted)".into()));
        }
        if let Some(expected) = expected_meta {
            let differences = meta_differences(&header.meta, expected);
            if !differences.is_empty() {
                return Err(SearchError::MetadataMismatch {
                    path: path.to_path_buf(),
                    differences,
                });
            }
        }
        if header.dim == 0 {
            return Err(corrupt("dimension 0".into()));
        }
        let data_start = (16 + header_len).div_ceil(ALIGN) * ALIGN;
        let rows = header.rows;
        // Counts and offsets come from the file: every size is computed with checks, so that a
        // damaged header is refused instead of overflowing.
        let section = |offset: usize,
                       count: usize,
                       item_bytes: usize,
                       what: &str|
         -> Result<&[u8], SearchError> {
            let start = data_start.checked_add(offset);
            let end = count
                .checked_mul(item_bytes)
                .and_then(|len| start.and_then(|s| s.checked_add(len)));
            match (start, end) {
                (Some(s), Some(e)) if e <= body_len => Ok(&bytes[s..e]),
                _ => Err(corrupt(format!("{what} section lies outside the file"))),
            }
        };
        let photos = read_u64s(section(header.photos_offset, rows, 8, "photo ids")?);
        let products = read_u64s(section(header.products_offset, rows, 8, "product ids")?);
        let category_ids: Vec<u32> = section(header.category_ids_offset, rows, 4, "category ids")?
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let deleted: Vec<bool> = section(header.deleted_offset, rows, 1, "deleted flags")?
            .iter()
            .map(|b| *b != 0)
            .collect();
        if let Some(bad) = category_ids
            .iter()
            .find(|&&c| c as usize >= header.categories.len())
        {
            return Err(corrupt(format!("category id {bad} out of range")));
        }
        let mut index = Index::new(header.dim, header.precision, header.meta.clone())?;
        index.categories = header.categories.clone();
        for row in 0..rows {
            index.push_row(category_ids[row], products[row], photos[row], deleted[row]);
        }
        if index.live_items.len() != index.deleted.iter().filter(|d| !**d).count() {
            return Err(corrupt(
                "a (photo, category, product) item appears twice among live rows".into(),
            ));
        }
        let mut total = 0;
        for (i, sh) in header.segments.iter().enumerate() {
            let norms: Vec<f32> = section(sh.norms_offset, sh.rows, 4, "norms")?
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            let matrix_bytes = sh
                .rows
                .checked_mul(header.dim)
                .and_then(|v| v.checked_mul(header.precision.bytes()))
                .ok_or_else(|| corrupt(format!("segment {i} size overflows")))?;
            section(sh.matrix_offset, matrix_bytes, 1, "matrix")?;
            let gallery = Gallery::mapped(
                map.clone(),
                data_start + sh.matrix_offset,
                sh.rows,
                header.dim,
                header.precision,
                norms,
            )
            .map_err(|e| corrupt(format!("segment {i}: {e}")))?;
            total = sh
                .rows
                .checked_add(total)
                .ok_or_else(|| corrupt(format!("segment {i} size overflows")))?;
            index.segments.push(gallery);
        }
        if total != rows {
            return Err(corrupt(format!(
                "segments hold {total} rows, columns {rows}"
            )));
        }
        if let Some((offset, len)) = header.approximate {
            let bytes = section(offset, len, 1, "approximate index")?;
            let graph = Hnsw::from_bytes(bytes, header.dim)
                .map_err(|e| corrupt(format!("approximate index: {e}")))?;
            if graph.len() != index.len() {
                return Err(corrupt(format!(
                    "approximate index holds {} photos, the index {}",
                    graph.len(),
                    index.len()
                )));
            }
            index.approximate = Some(graph);
        }
        Ok(index)
    }
}

/// `key: index has "X", expected "Y"` for every key whose values differ (missing = `<none>`).
fn meta_differences(
    found: &BTreeMap<String, String>,
    expected: &BTreeMap<String, String>,
) -> String {
    let keys: std::collections::BTreeSet<&String> = found.keys().chain(expected.keys()).collect();
    keys.into_iter()
        .filter(|k| found.get(*k) != expected.get(*k))
        .map(|k| {
            let show = |v: Option<&String>| v.map_or("<none>".to_string(), |v| format!("{v:?}"));
            format!(
                "{k}: index has {}, expected {}",
                show(found.get(k)),
                show(expected.get(k))
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn read_u64s(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect()
}

impl VectorSearch for Index {
    fn search(
        &self,
        query: &[f32],
        request: &SearchRequest,
    ) -> Result<Vec<ProductHit>, SearchError> {
        if query.len() != self.dim {
            return Err(SearchError::DimensionMismatch {
                expected: self.dim,
                found: query.len(),
            });
        }
        if self.use_approximate(request)? {
            return self.approximate_search(query, request);
        }
        Ok(self.exact(query, request)?.pop().unwrap_or_default())
    }

    fn search_batch(
        &self,
        queries: &[f32],
        request: &SearchRequest,
    ) -> Result<Vec<Vec<ProductHit>>, SearchError> {
        if self.use_approximate(request)? {
            if !queries.len().is_multiple_of(self.dim) {
                return Err(SearchError::DimensionMismatch {
                    expected: self.dim,
                    found: queries.len(),
                });
            }
            use rayon::prelude::*;
            return queries
                .par_chunks_exact(self.dim)
                .map(|q| self.approximate_search(q, request))
                .collect();
        }
        self.exact(queries, request)
    }

    fn len(&self) -> usize {
        self.live_items.len()
    }

    fn dim(&self) -> usize {
        self.dim
    }
}

/// Counts and hashes what goes through it; pads with zeros to absolute offsets.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    written: usize,
}

impl<W: Write> HashingWriter<W> {
    fn pad_to(&mut self, offset: usize) -> std::io::Result<()> {
        if offset < self.written {
            return Err(std::io::Error::other(
                "index writer went past a section offset",
            ));
        }
        let zeros = vec![0u8; offset - self.written];
        self.write_all(&zeros)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A temporary file beside the target that replaces it on `commit` (fsync, rename, fsync dir)
/// and is removed if dropped before.
struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    fn create(target: &Path) -> std::io::Result<AtomicFile> {
        let name = target
            .file_name()
            .ok_or_else(|| std::io::Error::other("index path has no file name"))?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(name);
        temp_name.push(format!(".tmp{}", std::process::id()));
        let temp = target.with_file_name(temp_name);
        let file = File::create(&temp)?;
        Ok(AtomicFile {
            target: target.to_path_buf(),
            temp,
            file: Some(file),
        })
    }

    fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("file is present until commit")
    }

    fn commit(mut self) -> std::io::Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_all()?;
        }
        std::fs::rename(&self.temp, &self.target)?;
        if let Some(dir) = self.target.parent() {
            let dir = if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            };
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
