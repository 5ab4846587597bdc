//! Two-tower retrieval: the item embeddings of one model version as one contiguous matrix, the known
//! users and the fallback list, all built at load (`load.rs`); and the top-k scan `recommend` runs per
//! user.

mod load;

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};
use std::sync::LazyLock;

use tract_onnx::prelude::{IntoTValue, Tensor, tvec};

use crate::error::{Error, Result};
use crate::scoring::onnx::OnnxModel;
use crate::scoring::quantized::{QuantizedMatrix, survivors};
use crate::scoring::spec::Metric;
use load::flat_f32;

/// Items per item-tower call while the matrix is built.
const ITEM_TOWER_BATCH: usize = 8192;

/// Matrices of at least this many values (4 MiB) are scanned on several threads.
const PARALLEL_SCAN_VALUES: usize = 1 << 20;

/// Threads one scan uses: one per core, at most 4. Read once: `available_parallelism` reads the
/// cgroup's CPU quota from files on every call.
static SCAN_THREADS: LazyLock<usize> =
    LazyLock::new(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(4)));

#[derive(Debug)]
pub struct Retrieval {
    item_ids: Vec<i64>,
    /// `item_ids.len() × dim` embeddings, row-major; unit rows under the cosine metric.
    matrix: Vec<f32>,
    /// The int8 copy the scan reads first (`None` for a matrix with non-finite values).
    quantized: Option<QuantizedMatrix>,
    dim: usize,
    metric: Metric,
    known_users: Option<HashSet<i64>>,
    fallback: Vec<(i64, Option<f64>)>,
}

/// One recommended item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scored {
    pub item_id: i64,
    /// `None` for fallback items listed without a score.
    pub score: Option<f64>,
    /// The item's row in the matrix (`None` for fallback items).
    pub index: Option<usize>,
}

impl Retrieval {
    fn new(
        item_ids: Vec<i64>,
        matrix: Vec<f32>,
        dim: usize,
        metric: Metric,
        known_users: Option<HashSet<i64>>,
        fallback: Vec<(i64, Option<f64>)>,
    ) -> Self {
        Self {
            quantized: QuantizedMatrix::new(&matrix, dim),
            item_ids,
            matrix,
            dim,
            metric,
            known_users,
            fallback,
        }
    }

    pub fn items(&self) -> usize {
        self.item_ids.len()
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Row `index` of the item matrix (unit length under the cosine metric).
    pub fn item_vector(&self, index: usize) -> &[f32] {
        &self.matrix[index * self.dim..(index + 1) * self.dim]
    }

    /// Whether the model was trained on this user (always, without a `[users]` query).
    pub fn knows(&self, user: i64) -> bool {
        self.known_users.as_ref().is_none_or(|k| k.contains(&user))
    }

    /// The fallback for unknown users: the first `k` of the `[fallback]` list, minus `exclude`.
    pub fn fallback(&self, k: usize, exclude: &HashSet<i64>) -> Vec<Scored> {
        self.fallback
            .iter()
            .filter(|(id, _)| !exclude.contains(id))
            .take(k)
            .map(|(item_id, score)| Scored {
                item_id: *item_id,
                score: *score,
                index: None,
            })
            .collect()
    }

    /// The user tower over a batch of user ids: `users.len() × dim` embeddings.
    pub fn embed_users(&self, tower: &OnnxModel, users: &[i64]) -> Result<Vec<f32>> {
        let input = Tensor::from_shape(&[users.len()], users)
            .map_err(|e| Error::Internal(format!("user id tensor: {e}")))?;
        let outputs = tower.run(tvec![input.into_tvalue()])?;
        let mut vectors = flat_f32(&outputs[0], users.len() * self.dim, "user tower")?;
        if self.metric == Metric::Cosine {
            for row in vectors.chunks_exact_mut(self.dim) {
                normalize(row);
            }
        }
        Ok(vectors)
    }

    /// The `k` best items for one user embedding, best first; ties go to the earlier item. Items
    /// whose score is NaN (a user embedding with NaN, an infinite value times 0) are left out:
    /// they cannot be ranked, and as the largest f32 in `total_cmp`'s order they would come first.
    /// The int8
    /// copy of the matrix is scanned first and only the rows it cannot rule out are scored in float
    /// (see [`crate::scoring::quantized`]); the result is the one a full float scan gives. A large
    /// matrix is scanned in slices on one thread per core.
    pub fn top_k(&self, user: &[f32], k: usize, exclude: &HashSet<i64>) -> Vec<Scored> {
        if k == 0 {
            return Vec::new();
        }
        let keep = |index: usize| exclude.is_empty() || !exclude.contains(&self.item_ids[index]);
        let quantized = self
            .quantized
            .as_ref()
            .and_then(|q| Some((q, q.user(user)?)));
        let mut best: Vec<Candidate> = match quantized {
            Some((matrix, query)) => {
                let parts = self.in_slices(|range| matrix.bounds(&query, k, range, keep));
                survivors(parts, k)
                    .into_iter()
                    .map(|index| Candidate {
                        score: dot(user, self.item_vector(index)),
                        index,
                    })
                    .filter(|c| !c.score.is_nan())
                    .collect()
            }
            None => self
                .in_slices(|range| self.scan(user, k, range, keep))
                .into_iter()
                .flatten()
                .collect(),
        };
        best.sort();
        best.truncate(k);
        best.into_iter()
            .map(|c| Scored {
                item_id: self.item_ids[c.index],
                score: Some(f64::from(c.score)),
                index: Some(c.index),
            })
            .collect()
    }

    /// `scan` over the rows, in one slice per thread for a large matrix. The slices run on rayon's
    /// pool, whose threads stay between calls: spawning one per call cost about as much as scanning a
    /// tenth of the matrix.
    fn in_slices<T: Send>(&self, scan: impl Fn(std::ops::Range<usize>) -> T + Sync) -> Vec<T> {
        use rayon::prelude::*;
        let rows = self.item_ids.len();
        let threads = if self.matrix.len() >= PARALLEL_SCAN_VALUES {
            *SCAN_THREADS
        } else {
            1
        };
        if threads <= 1 {
            return vec![scan(0..rows)];
        }
        let slice = rows.div_ceil(threads);
        (0..threads)
            .into_par_iter()
            .map(|t| scan((t * slice).min(rows)..((t + 1) * slice).min(rows)))
            .collect()
    }

    /// The best `k` of the matrix rows in `range` by their float scores, in no particular order.
    fn scan(
        &self,
        user: &[f32],
        k: usize,
        range: std::ops::Range<usize>,
        keep: impl Fn(usize) -> bool,
    ) -> Vec<Candidate> {
        let mut best: BinaryHeap<Candidate> = BinaryHeap::with_capacity(k + 1);
        let rows = self.matrix[range.start * self.dim..range.end * self.dim].chunks_exact(self.dim);
        for (index, row) in range.zip(rows) {
            let score = dot(user, row);
            if score.is_nan()
                || best.len() == k
                    && best
                        .peek()
                        .is_some_and(|worst| score.total_cmp(&worst.score) != Ordering::Greater)
            {
                continue;
            }
            if !keep(index) {
                continue;
            }
            best.push(Candidate { score, index });
            if best.len() > k {
                best.pop();
            }
        }
        best.into_vec()
    }
}

/// A heap entry ordered so the heap's top is the worst kept candidate (lowest score, then latest item).
#[derive(Debug, Clone, Copy)]
struct Candidate {
    score: f32,
    index: usize,
}

impl Ord for Candidate {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .score
            .total_cmp(&self.score)
            .then(self.index.cmp(&other.index))
    }
}

impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Candidate {}

/// Dot product over fixed-size chunks with eight independent accumulators: the compiler turns the
/// inner loop into SIMD multiply-adds (slices of unknown length would keep bounds checks in it).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a8, a_tail) = a.as_chunks::<8>();
    let (b8, b_tail) = b.as_chunks::<8>();
    let mut acc = [0f32; 8];
    for (x, y) in a8.iter().zip(b8) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(x, y)| x * y).sum();
    acc.iter().sum::<f32>() + tail
}

fn normalize(row: &mut [f32]) {
    let norm = dot(row, row).sqrt();
    if norm > 0.0 {
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reference ranking: every row scored, sorted by score (then row) descending.
    fn ranked(matrix: &[f32], dim: usize, user: &[f32]) -> Vec<(f32, usize)> {
        let mut all: Vec<(f32, usize)> = matrix
            .chunks(dim)
            .enumerate()
            .map(|(i, row)| (dot(user, row), i))
            .collect();
        all.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        all
    }

    fn retrieval(matrix: Vec<f32>, dim: usize) -> Retrieval {
        Retrieval::new(
            (0..(matrix.len() / dim) as i64).map(|i| i * 10).collect(),
            matrix,
            dim,
            Metric::Dot,
            None,
            vec![(7, Some(3.0)), (8, None)],
        )
    }

    #[test]
    fn top_k_matches_a_full_sort() {
        let dim = 3;
        let matrix: Vec<f32> = (0..300)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        let r = retrieval(matrix.clone(), dim);
        let user = [0.5f32, -1.0, 2.0];
        let all = ranked(&matrix, dim, &user);
        let exclude: HashSet<i64> = [all[1].1 as i64 * 10].into();
        let got = r.top_k(&user, 5, &exclude);
        let want: Vec<i64> = all
            .iter()
            .map(|(_, i)| *i as i64 * 10)
            .filter(|id| !exclude.contains(id))
            .take(5)
            .collect();
        assert_eq!(got.iter().map(|s| s.item_id).collect::<Vec<_>>(), want);
        assert!(got.windows(2).all(|w| w[0].score >= w[1].score));
        assert!(r.top_k(&user, 0, &exclude).is_empty());
        assert_eq!(r.top_k(&user, 1000, &HashSet::new()).len(), 100);
    }

    #[test]
    fn parallel_scan_agrees_with_a_full_sort() {
        let dim = 64;
        let rows = PARALLEL_SCAN_VALUES / dim + 1001;
        let matrix: Vec<f32> = (0..rows * dim)
            .map(|i| ((i as u64 * 2_654_435_761) % 10_007) as f32 / 10_007.0 - 0.5)
            .collect();
        let r = retrieval(matrix.clone(), dim);
        let user: Vec<f32> = (0..dim).map(|i| (i as f32 - 30.0) / 64.0).collect();
        let all = ranked(&matrix, dim, &user);
        let got: Vec<usize> = r
            .top_k(&user, 25, &HashSet::new())
            .iter()
            .filter_map(|s| s.index)
            .collect();
        assert_eq!(
            got,
            all.iter().take(25).map(|(_, i)| *i).collect::<Vec<_>>()
        );
    }

    #[test]
    fn the_int8_first_pass_gives_the_float_scans_result() {
        // Clustered rows with exact duplicates (ties), a wide range of magnitudes, exclusions, k
        // from 1 to past the number of rows: the two-pass scan must equal the full float ranking.
        let (rows, dim) = (3000, 16);
        let mut seed = 3u64;
        let mut next = move || {
            seed = seed
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (seed >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut matrix = Vec::with_capacity(rows * dim);
        for row in 0..rows {
            if row % 7 == 3 {
                let copy = matrix[(row - 3) * dim..(row - 2) * dim].to_vec();
                matrix.extend(copy);
            } else {
                let size = if row % 11 == 0 { 50.0 } else { 1.0 };
                matrix.extend((0..dim).map(|_| next() * size));
            }
        }
        let r = retrieval(matrix.clone(), dim);
        assert!(r.quantized.is_some());
        for (case, k) in [1, 5, 10, 64, 500, 4000].into_iter().enumerate() {
            let user: Vec<f32> = (0..dim).map(|_| next() * 2.0).collect();
            let all = ranked(&matrix, dim, &user);
            let exclude: HashSet<i64> =
                all.iter().take(case).map(|(_, i)| *i as i64 * 10).collect();
            let want: Vec<(usize, f32)> = all
                .iter()
                .filter(|(_, i)| !exclude.contains(&(*i as i64 * 10)))
                .take(k)
                .map(|(s, i)| (*i, *s))
                .collect();
            let got: Vec<(usize, f32)> = r
                .top_k(&user, k, &exclude)
                .iter()
                .map(|s| (s.index.expect("row"), s.score.expect("score") as f32))
                .collect();
            assert_eq!(got, want, "k = {k}");
        }
    }

    #[test]
    fn a_matrix_with_non_finite_values_is_scanned_in_float() {
        let matrix = vec![1.0, 0.0, f32::INFINITY, 1.0, 0.5, 0.5];
        let r = retrieval(matrix.clone(), 2);
        assert!(r.quantized.is_none());
        let user = [1.0, -1.0];
        let got: Vec<usize> = r
            .top_k(&user, 3, &HashSet::new())
            .iter()
            .filter_map(|s| s.index)
            .collect();
        let want: Vec<usize> = ranked(&matrix, 2, &user).iter().map(|(_, i)| *i).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn nan_scores_are_left_out() {
        // For the user (0, 1), row 1 scores ∞ · 0 + 1 = NaN.
        let r = retrieval(vec![1.0, 0.0, f32::INFINITY, 1.0, 0.5, 0.5], 2);
        let indexes = |r: &Retrieval, user: &[f32]| -> Vec<usize> {
            r.top_k(user, 3, &HashSet::new())
                .iter()
                .filter_map(|s| s.index)
                .collect()
        };
        assert_eq!(indexes(&r, &[0.0, 1.0]), vec![2, 0]);
        assert!(indexes(&r, &[f32::NAN, 1.0]).is_empty());
        // A user with NaN gets no int8 first pass: the float scan leaves every row out.
        let finite = retrieval(vec![1.0, 0.0, 0.0, 1.0], 2);
        assert!(finite.quantized.is_some());
        assert!(indexes(&finite, &[f32::NAN, 1.0]).is_empty());
        assert_eq!(indexes(&finite, &[0.5, 1.0]), vec![1, 0]);
    }

    #[test]
    fn dot_handles_tails() {
        let a: Vec<f32> = (0..19).map(|i| i as f32).collect();
        let expected: f32 = a.iter().map(|x| x * x).sum();
        assert_eq!(dot(&a, &a), expected);
    }

    #[test]
    fn fallback_skips_excluded() {
        let r = retrieval(vec![0.0; 3], 3);
        let got = r.fallback(5, &[7].into());
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].item_id, 8);
        assert_eq!(got[0].score, None);
    }
}
