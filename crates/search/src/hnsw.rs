//! Approximate nearest neighbours: an HNSW graph (usearch) over the index's rows.
//!
//! Why usearch (measured on this shared, busy 2-core machine with 20k clustered 1280-d unit
//! vectors, M = 16, ef_construction = 128, ef_search = 64, recall@10 = 1.0 for all three):
//! build / query took 70 s / 2.2 ms for usearch, 82 s / 3.3 ms for `hnsw_rs` and 508 s / 3.6 ms
//! for `instant-distance`. At 100k (`benches/knn_speed.rs`, ef_search = 128) usearch builds in
//! about 110 s and answers in 2.4 ms against 33 ms for the exact scan, recall@10 = 1.0.
//! Besides being fastest, it is the only one of the three that removes points, renames keys (so
//! compaction keeps the graph), searches with a predicate (filters), and serialises to a byte
//! buffer that fits inside our own checksummed file; it is actively maintained. `hnsw_rs`
//! cannot delete and exits the process on bad parameters; `instant-distance` cannot add to a
//! built graph. usearch is C++ compiled by `cc` with the system g++.
//!
//! Graph keys are row numbers of the index. The graph keeps its own f16 copy of the vectors and
//! only proposes candidates: the index rescores them exactly, so reported scores are exact.

use usearch::{IndexOptions, MetricKind, ScalarKind};

use crate::SearchError;

/// Connectivity (M): links per node.
const CONNECTIVITY: usize = 16;
/// Candidate list size while inserting.
const EXPANSION_ADD: usize = 128;
/// Candidate list size while searching: 64 gave recall@10 = 0.95 on 10k clustered vectors,
/// 128 leaves margin for the 0.98 goal at about twice the query time.
const EXPANSION_SEARCH: usize = 128;

fn err(context: &str, e: impl std::fmt::Display) -> SearchError {
    SearchError::Approximate(format!("{context}: {e}"))
}

/// An HNSW graph for cosine distance.
pub(crate) struct Hnsw {
    graph: usearch::Index,
}

impl Hnsw {
    pub fn new(dim: usize) -> Result<Hnsw, SearchError> {
        let options = IndexOptions {
            dimensions: dim,
            metric: MetricKind::Cos,
            quantization: ScalarKind::F16,
            connectivity: CONNECTIVITY,
            expansion_add: EXPANSION_ADD,
            expansion_search: EXPANSION_SEARCH,
            multi: false,
        };
        let graph = usearch::Index::new(&options).map_err(|e| err("create", e))?;
        Ok(Hnsw { graph })
    }

    pub fn len(&self) -> usize {
        self.graph.size()
    }

    /// Inserts rows (key, vector) on all cores.
    pub fn add<'a>(
        &self,
        rows: impl rayon::iter::ParallelIterator<Item = (u64, &'a [f32])>,
    ) -> Result<(), SearchError> {
        use rayon::prelude::*;
        let rows: Vec<(u64, &[f32])> = rows.collect();
        let needed = self.graph.size() + rows.len();
        if needed > self.graph.capacity() {
            self.graph
                .reserve_capacity_and_threads(
                    needed.max(2 * self.graph.capacity()),
                    rayon::current_num_threads(),
                )
                .map_err(|e| err("reserve", e))?;
        }
        rows.par_iter()
            .try_for_each(|(key, vector)| self.graph.add(*key, vector).map_err(|e| err("add", e)))
    }

    pub fn remove(&self, key: u64) -> Result<(), SearchError> {
        self.graph
            .remove(key)
            .map(|_| ())
            .map_err(|e| err("remove", e))
    }

    pub fn rename(&self, from: u64, to: u64) -> Result<(), SearchError> {
        self.graph
            .rename(from, to)
            .map(|_| ())
            .map_err(|e| err("rename", e))
    }

    /// Up to `count` candidate keys passing `allowed`, nearest first.
    pub fn search(
        &self,
        query: &[f32],
        count: usize,
        allowed: impl Fn(u64) -> bool,
    ) -> Result<Vec<u64>, SearchError> {
        let found = self
            .graph
            .filtered_search(query, count, allowed)
            .map_err(|e| err("search", e))?;
        Ok(found.keys)
    }

    pub fn to_bytes(&self) -> Result<Vec<u8>, SearchError> {
        let mut buffer = vec![0u8; self.graph.serialized_length()];
        self.graph
            .save_to_buffer(&mut buffer)
            .map_err(|e| err("save", e))?;
        Ok(buffer)
    }

    /// Reads a graph written by [`Hnsw::to_bytes`], after checking its structure: usearch
    /// trusts the vector sizes and neighbour lists of what it reads, and a damaged graph makes
    /// its searches read out of bounds.
    pub fn from_bytes(bytes: &[u8], dim: usize) -> Result<Hnsw, SearchError> {
        let reference = Hnsw::new(dim)?.to_bytes()?;
        check_serialized(bytes, &reference, dim).map_err(|e| err("load", e))?;
        let graph = usearch::Index::restore_from_buffer(bytes).map_err(|e| err("load", e))?;
        if graph.dimensions() != dim {
            return Err(err(
                "load",
                format!("graph has dimension {}, index {dim}", graph.dimensions()),
            ));
        }
        graph.change_expansion_search(EXPANSION_SEARCH);
        Ok(Hnsw { graph })
    }
}

/// Little-endian reads from a byte slice, failing past its end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| format!("the graph ends inside its {what}"))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
    }
}

/// Bytes of usearch's dense-index head: magic (7), version (3 x u16), metric, scalar, key and
/// slot kinds (4 x u8), counts present and deleted (2 x u64), dimensions (u64), multi (u8).
const DENSE_HEAD_BYTES: usize = 64;
/// The head's bytes that must equal those of a graph we create (magic, version, kinds).
const DENSE_HEAD_KINDS: std::ops::Range<usize> = 0..17;
const DENSE_HEAD_DIMENSIONS: std::ops::Range<usize> = 33..41;
const DENSE_HEAD_MULTI: usize = 41;
/// No graph of ours has more levels than this (log base 16 of 2^64 is 16).
const MAX_LEVELS: u64 = 64;

/// The structural facts of a serialised graph (usearch 2.x, vectors included, 32-bit matrix
/// dimensions): vector matrix, dense head, graph header, node levels, then each node's key,
/// level and neighbour lists (a count, then `connectivity` slots; twice as many at level 0).
struct GraphLayout {
    vector_bytes: u32,
    head: [u8; DENSE_HEAD_BYTES],
    connectivity: u64,
    connectivity_base: u64,
}

fn graph_layout(bytes: &[u8]) -> Result<(GraphLayout, Reader<'_>, u32), String> {
    let mut reader = Reader { bytes, at: 0 };
    let rows = reader.u32("matrix size")?;
    let vector_bytes = reader.u32("matrix size")?;
    let matrix = u64::from(rows) * u64::from(vector_bytes);
    let matrix = usize::try_from(matrix).map_err(|_| "the vector matrix is too large")?;
    reader.take(matrix, "vectors")?;
    let mut head = [0u8; DENSE_HEAD_BYTES];
    head.copy_from_slice(reader.take(DENSE_HEAD_BYTES, "head")?);
    let size = reader.u64("header")?;
    if size != u64::from(rows) {
        return Err(format!("the graph has {size} nodes for {rows} vectors"));
    }
    let connectivity = reader.u64("header")?;
    let connectivity_base = reader.u64("header")?;
    Ok((
        GraphLayout {
            vector_bytes,
            head,
            connectivity,
            connectivity_base,
        },
        reader,
        rows,
    ))
}

fn check_serialized(bytes: &[u8], reference: &[u8], dim: usize) -> Result<(), String> {
    let (expected, _, _) = graph_layout(reference)?;
    let (layout, mut reader, rows) = graph_layout(bytes)?;
    if layout.vector_bytes != expected.vector_bytes
        || layout.head[DENSE_HEAD_KINDS] != expected.head[DENSE_HEAD_KINDS]
        || layout.head[DENSE_HEAD_DIMENSIONS] != (dim as u64).to_le_bytes()
        || layout.head[DENSE_HEAD_MULTI] != 0
    {
        return Err("the graph's vector type, version or dimension is not ours".into());
    }
    if layout.connectivity != expected.connectivity
        || layout.connectivity_base != expected.connectivity_base
    {
        return Err(format!(
            "the graph has connectivity {}/{}, ours is {}/{}",
            layout.connectivity,
            layout.connectivity_base,
            expected.connectivity,
            expected.connectivity_base
        ));
    }
    let max_level = reader.u64("header")?;
    let entry_slot = reader.u64("header")?;
    let size = u64::from(rows);
    if size == 0 {
        return if reader.at == bytes.len() {
            Ok(())
        } else {
            Err("an empty graph is followed by more bytes".into())
        };
    }
    if max_level >= MAX_LEVELS || entry_slot >= size {
        return Err(format!(
            "the graph's top level {max_level} or entry node {entry_slot} is out of range"
        ));
    }
    let mut levels = Vec::with_capacity(rows as usize);
    for _ in 0..rows {
        let level = reader.u16("node levels")? as i16;
        if level < 0 || level as u64 > max_level {
            return Err(format!(
                "a node has level {level}, above the top {max_level}"
            ));
        }
        levels.push(level as u64);
    }
    if levels[entry_slot as usize] < max_level {
        return Err("the entry node is below the top level".into());
    }
    for (node, &level) in levels.iter().enumerate() {
        reader.u64("nodes")?;
        if reader.u16("nodes")? as u64 != level {
            return Err(format!("node {node}'s level differs from the level table"));
        }
        for layer in 0..=level {
            let capacity = if layer == 0 {
                layout.connectivity_base
            } else {
                layout.connectivity
            };
            let count = u64::from(reader.u32("neighbour lists")?);
            if count > capacity {
                return Err(format!(
                    "node {node} has {count} neighbours at level {layer}, more than {capacity}"
                ));
            }
            let slots = reader.take(capacity as usize * 4, "neighbour lists")?;
            for slot in slots.chunks_exact(4).take(count as usize) {
                let slot = u32::from_le_bytes([slot[0], slot[1], slot[2], slot[3]]);
                if u64::from(slot) >= size {
                    return Err(format!("node {node} links to node {slot} of {size}"));
                }
                // Searches descend level by level through these links: a link at a level
                // its target lacks makes usearch abort the process.
                if levels[slot as usize] < layer {
                    return Err(format!(
                        "node {node} links at level {layer} to node {slot}, which has no level {layer}"
                    ));
                }
            }
        }
    }
    if reader.at != bytes.len() {
        return Err(format!(
            "{} bytes follow the last node",
            bytes.len() - reader.at
        ));
    }
    Ok(())
}
