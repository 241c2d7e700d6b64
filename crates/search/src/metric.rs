//! Distance metrics with scipy `cdist` semantics.

use std::fmt;
use std::str::FromStr;

use crate::kernels;

/// A way to compare two vectors.
///
/// Every metric but [`Metric::InnerProduct`] is a distance with the meaning of scipy's
/// `cdist` (`cosine`, `euclidean`, `sqeuclidean`, `cityblock`, `chebyshev`): smaller is better.
/// The inner product is a similarity: larger is better ([`Metric::higher_is_better`]).
///
/// Defined results where scipy warns or returns NaN:
/// - the cosine distance between a zero vector and any vector is `1.0` (as if orthogonal);
/// - a NaN anywhere in either vector gives a NaN score, and NaN scores rank after every other
///   score (see [`rank_key`]).
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// `1 - u.v / (|u| |v|)`; scipy `cosine`.
    #[default]
    Cosine,
    /// `sqrt(sum (u - v)^2)`; scipy `euclidean`.
    Euclidean,
    /// `sum (u - v)^2`; scipy `sqeuclidean`.
    SqEuclidean,
    /// `u.v`, a similarity (larger is better).
    InnerProduct,
    /// `sum |u - v|`; scipy `cityblock`.
    Manhattan,
    /// `max |u - v|`; scipy `chebyshev`.
    Chebyshev,
}

impl Metric {
    /// Every metric, in a fixed order.
    pub const ALL: [Metric; 6] = [
        Metric::Cosine,
        Metric::Euclidean,
        Metric::SqEuclidean,
        Metric::InnerProduct,
        Metric::Manhattan,
        Metric::Chebyshev,
    ];

    /// True for similarities (larger score is better), false for distances.
    pub fn higher_is_better(self) -> bool {
        matches!(self, Metric::InnerProduct)
    }

    /// The metric's name as accepted by [`Metric::from_str`].
    pub fn name(self) -> &'static str {
        match self {
            Metric::Cosine => "cosine",
            Metric::Euclidean => "euclidean",
            Metric::SqEuclidean => "sqeuclidean",
            Metric::InnerProduct => "inner_product",
            Metric::Manhattan => "manhattan",
            Metric::Chebyshev => "chebyshev",
        }
    }

    /// Whether the exact search computes this metric through a matrix product.
    pub(crate) fn uses_dot(self) -> bool {
        matches!(
            self,
            Metric::Cosine | Metric::Euclidean | Metric::SqEuclidean | Metric::InnerProduct
        )
    }

    /// The score of `a` against `b`, computed directly (no matrix product).
    ///
    /// Panics are impossible; slices of different lengths are compared over the shorter one,
    /// so callers check dimensions first.
    pub fn score(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Metric::Cosine => {
                let na = kernels::dot(a, a).sqrt();
                let nb = kernels::dot(b, b).sqrt();
                cosine_from_dot(kernels::dot(a, b), na, nb)
            }
            Metric::Euclidean => kernels::sq_l2(a, b).sqrt(),
            Metric::SqEuclidean => kernels::sq_l2(a, b),
            Metric::InnerProduct => kernels::dot(a, b),
            Metric::Manhattan => kernels::l1(a, b),
            Metric::Chebyshev => kernels::linf(a, b),
        }
    }
}

/// Cosine distance from a dot product and the two norms, with the zero-vector rule.
#[inline(always)]
pub(crate) fn cosine_from_dot(dot: f32, norm_a: f32, norm_b: f32) -> f32 {
    if norm_a == 0.0 || norm_b == 0.0 {
        1.0
    } else {
        1.0 - dot / (norm_a * norm_b)
    }
}

/// The ranking key of a score: smaller key = better rank, for every metric.
///
/// Keys order scores exactly as the metric prefers them; equal scores give equal keys
/// (`-0.0` equals `0.0`), and NaN maps to the largest key so it ranks last. Search results
/// are ordered by `(rank_key, position)`, which makes ties deterministic.
#[inline(always)]
pub fn rank_key(metric: Metric, score: f32) -> u32 {
    let oriented = if metric.higher_is_better() {
        -score
    } else {
        score
    };
    ordered_bits(oriented)
}

/// Maps an f32 to a u32 with the same order; NaN maps to `u32::MAX`.
#[inline(always)]
pub(crate) fn ordered_bits(x: f32) -> u32 {
    if x.is_nan() {
        return u32::MAX;
    }
    let bits = (x + 0.0).to_bits();
    if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Error of [`Metric::from_str`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown metric {0:?} (expected cosine, euclidean, sqeuclidean, inner_product, manhattan or chebyshev)")]
pub struct UnknownMetric(pub String);

impl FromStr for Metric {
    type Err = UnknownMetric;

    /// Accepts the names of [`Metric::name`] and scipy's aliases (`cityblock`, `ip`, `dot`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "cosine" => Metric::Cosine,
            "euclidean" | "l2" => Metric::Euclidean,
            "sqeuclidean" => Metric::SqEuclidean,
            "inner_product" | "ip" | "dot" => Metric::InnerProduct,
            "manhattan" | "cityblock" | "l1" => Metric::Manhattan,
            "chebyshev" | "linf" => Metric::Chebyshev,
            _ => return Err(UnknownMetric(s.to_string())),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_scipy_values() {
        let u = [1.0f32, 0.0, 2.0];
        let v = [0.0f32, 3.0, 4.0];
        // scipy: cosine 1 - 8/(sqrt5*5), euclidean sqrt(1+9+4), cityblock 1+3+2, chebyshev 3
        assert!((Metric::Cosine.score(&u, &v) - (1.0 - 8.0 / (5f32.sqrt() * 5.0))).abs() < 1e-6);
        assert_eq!(Metric::SqEuclidean.score(&u, &v), 14.0);
        assert!((Metric::Euclidean.score(&u, &v) - 14f32.sqrt()).abs() < 1e-6);
        assert_eq!(Metric::InnerProduct.score(&u, &v), 8.0);
        assert_eq!(Metric::Manhattan.score(&u, &v), 6.0);
        assert_eq!(Metric::Chebyshev.score(&u, &v), 3.0);
    }

    #[test]
    fn zero_and_nan_are_defined() {
        let z = [0.0f32; 4];
        let v = [1.0f32, 2.0, 3.0, 4.0];
        assert_eq!(Metric::Cosine.score(&z, &v), 1.0);
        assert_eq!(Metric::Cosine.score(&z, &z), 1.0);
        let n = [f32::NAN, 0.0, 0.0, 0.0];
        for m in Metric::ALL {
            assert!(m.score(&n, &v).is_nan(), "{m}");
            assert_eq!(rank_key(m, m.score(&n, &v)), u32::MAX);
        }
    }

    #[test]
    fn keys_order_like_the_metric() {
        assert!(rank_key(Metric::Cosine, 0.1) < rank_key(Metric::Cosine, 0.2));
        assert!(rank_key(Metric::InnerProduct, 0.2) < rank_key(Metric::InnerProduct, 0.1));
        assert!(rank_key(Metric::Euclidean, -1.0) < rank_key(Metric::Euclidean, 0.0));
        assert_eq!(
            rank_key(Metric::Cosine, -0.0),
            rank_key(Metric::Cosine, 0.0)
        );
        assert!(rank_key(Metric::Cosine, f32::INFINITY) < rank_key(Metric::Cosine, f32::NAN));
    }

    #[test]
    fn names_round_trip() {
        for m in Metric::ALL {
            assert_eq!(m.name().parse::<Metric>(), Ok(m));
        }
        assert_eq!("cityblock".parse::<Metric>(), Ok(Metric::Manhattan));
        assert!("hamming".parse::<Metric>().is_err());
    }
}
