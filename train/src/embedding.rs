//! What a loss does to the embedding space: the embeddings of a split, a scale-free measure of
//! how tight and separate the classes are, and a 2-D PCA projection to look at.

use anyhow::{Result, bail};
use burn::module::Param;
use burn::prelude::*;
use fer_protocol::Expression;

use crate::batch::eval_batch;
use crate::dataset::Sample;
use crate::model::ExpressionNet;

/// Embeddings of a set of faces with their true classes.
pub struct Embedded {
    /// One embedding per face, each `D` long.
    pub points: Vec<Vec<f32>>,
    /// Class index of each face.
    pub labels: Vec<usize>,
}

/// Embeds samples with `model` in inference mode.
pub fn embed(model: &ExpressionNet, samples: &[Sample], device: &Device) -> Embedded {
    let model = model.valid();
    let mut points = Vec::with_capacity(samples.len());
    let mut labels = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(256) {
        let batch = eval_batch(chunk);
        let (inputs, _) = batch.to_tensors(device);
        let embedding = model.forward(inputs).embedding;
        let dim = embedding.dims()[1];
        let values = embedding
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("float tensor");
        points.extend(values.chunks_exact(dim).map(<[f32]>::to_vec));
        labels.extend(batch.labels.iter().map(|&l| l as usize));
    }
    Embedded { points, labels }
}

/// How the classes sit in the embedding space, measured against the class means of the data
/// itself (not the learned centers, which the cross-entropy baseline never trains).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Separation {
    /// Mean squared distance of a face to its own class mean.
    pub within: f64,
    /// Mean squared distance of a face to the nearest other class mean.
    pub between: f64,
    /// Share of faces whose nearest class mean is their own class's.
    pub nearest_mean_accuracy: f64,
}

impl Separation {
    /// Measures `embedded`; classes without faces are left out.
    pub fn measure(embedded: &Embedded) -> Self {
        let means = class_means(embedded);
        let (mut within, mut between, mut correct) = (0.0, 0.0, 0usize);
        for (point, &label) in embedded.points.iter().zip(&embedded.labels) {
            let mut nearest_other = f64::INFINITY;
            let mut own = f64::INFINITY;
            for (class, mean) in means.iter().enumerate() {
                let Some(mean) = mean else { continue };
                let d = squared_distance(point, mean);
                if class == label {
                    own = d;
                } else {
                    nearest_other = nearest_other.min(d);
                }
            }
            within += own;
            between += nearest_other;
            correct += usize::from(own < nearest_other);
        }
        let n = embedded.points.len().max(1) as f64;
        Self {
            within: within / n,
            between: between / n,
            nearest_mean_accuracy: correct as f64 / n,
        }
    }

    /// `within / between`: lower means tighter, better separated classes, whatever the scale.
    pub fn ratio(&self) -> f64 {
        self.within / self.between
    }
}

/// `model` with its centers replaced by the mean embedding of each class over `samples`.
///
/// A cross-entropy run never trains its centers (they stay at their random start), so its center
/// distances would be noise; class means are what a trained center approximates.
pub fn with_class_mean_centers(model: ExpressionNet, samples: &[Sample], device: &Device) -> Result<ExpressionNet> {
    let (model, present) = class_mean_centers(model, samples, device);
    if let Some(absent) = present.iter().position(|p| !p) {
        bail!(
            "the images hold no `{}` face, so its center cannot be estimated",
            Expression::ALL[absent].name()
        );
    }
    Ok(model)
}

/// Like [`with_class_mean_centers`], but a class without a face keeps a center at the origin,
/// marked `false` in the returned list, for callers that can leave it out (a smoke run's few
/// faces may lack a rare class).
pub fn class_mean_centers(
    mut model: ExpressionNet,
    samples: &[Sample],
    device: &Device,
) -> (ExpressionNet, [bool; Expression::COUNT]) {
    let embedded = embed(&model, samples, device);
    let dim = model.centers.val().dims()[1];
    let means = class_means(&embedded);
    let present = std::array::from_fn(|k| means[k].is_some());
    let flat: Vec<f32> = means
        .iter()
        .flat_map(|mean| match mean {
            Some(mean) => mean.iter().map(|&v| v as f32).collect(),
            None => vec![0.0; dim],
        })
        .collect();
    model.centers = Param::from_tensor(Tensor::from_data(
        TensorData::new(flat, [Expression::COUNT, dim]),
        device,
    ));
    (model, present)
}

fn class_means(embedded: &Embedded) -> Vec<Option<Vec<f64>>> {
    let dim = embedded.points.first().map_or(0, Vec::len);
    let mut sums = vec![vec![0.0; dim]; Expression::COUNT];
    let mut counts = [0usize; Expression::COUNT];
    for (point, &label) in embedded.points.iter().zip(&embedded.labels) {
        counts[label] += 1;
        for (s, &v) in sums[label].iter_mut().zip(point) {
            *s += f64::from(v);
        }
    }
    sums.into_iter()
        .zip(counts)
        .map(|(sum, count)| (count > 0).then(|| sum.into_iter().map(|s| s / count as f64).collect()))
        .collect()
}

fn squared_distance(a: &[f32], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(&x, &m)| (f64::from(x) - m).powi(2)).sum()
}

/// Projects points onto their two principal components (power iteration on the covariance,
/// with deflation: D is ~128, so no linear-algebra crate is needed for two eigenvectors).
pub fn pca2(points: &[Vec<f32>]) -> Vec<[f64; 2]> {
    let dim = points.first().map_or(0, Vec::len);
    let n = points.len().max(1) as f64;
    let mut mean = vec![0.0; dim];
    for point in points {
        for (m, &v) in mean.iter_mut().zip(point) {
            *m += f64::from(v) / n;
        }
    }
    let centered: Vec<Vec<f64>> = points
        .iter()
        .map(|p| p.iter().zip(&mean).map(|(&v, m)| f64::from(v) - m).collect())
        .collect();
    let mut covariance = vec![vec![0.0; dim]; dim];
    for p in &centered {
        for (row, &pi) in covariance.iter_mut().zip(p) {
            for (c, &pj) in row.iter_mut().zip(p) {
                *c += pi * pj / n;
            }
        }
    }
    let first = top_eigenvector(&covariance);
    let variance = rayleigh(&covariance, &first);
    for (row, &fi) in covariance.iter_mut().zip(&first) {
        for (c, &fj) in row.iter_mut().zip(&first) {
            *c -= variance * fi * fj;
        }
    }
    let second = top_eigenvector(&covariance);
    let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
    centered.iter().map(|p| [dot(p, &first), dot(p, &second)]).collect()
}

fn multiply(matrix: &[Vec<f64>], v: &[f64]) -> Vec<f64> {
    matrix
        .iter()
        .map(|row| row.iter().zip(v).map(|(a, b)| a * b).sum())
        .collect()
}

fn rayleigh(matrix: &[Vec<f64>], v: &[f64]) -> f64 {
    multiply(matrix, v).iter().zip(v).map(|(a, b)| a * b).sum()
}

fn top_eigenvector(matrix: &[Vec<f64>]) -> Vec<f64> {
    let dim = matrix.len();
    // A fixed, uneven start so the result is reproducible and not orthogonal to the answer by
    // accident of symmetry.
    let mut v: Vec<f64> = (0..dim).map(|i| 1.0 + (i as f64 * 0.37).sin()).collect();
    for _ in 0..1000 {
        let next = multiply(matrix, &v);
        let norm = next.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm == 0.0 {
            return vec![0.0; dim];
        }
        let next: Vec<f64> = next.iter().map(|x| x / norm).collect();
        let change: f64 = next.iter().zip(&v).map(|(a, b)| (a - b).abs()).sum();
        v = next;
        if change < 1e-12 {
            break;
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pca_finds_the_two_widest_directions() {
        // Spread 10 along axis 3, 3 along axis 0, 0.1 elsewhere (5-D).
        let points: Vec<Vec<f32>> = (0..400)
            .map(|i| {
                let t = i as f32;
                let a = (t * 0.71).sin();
                let b = (t * 1.37).cos();
                let c = (t * 2.11).sin() * 0.1;
                vec![3.0 * b, c, -c, 10.0 * a + 5.0, c * 0.5]
            })
            .collect();
        let projected = pca2(&points);
        for (p, q) in points.iter().zip(&projected) {
            assert!((q[0].abs() - f64::from(p[3] - 5.0).abs()).abs() < 0.05, "{p:?} {q:?}");
            assert!((q[1].abs() - f64::from(p[0]).abs()).abs() < 0.05, "{p:?} {q:?}");
        }
    }

    #[test]
    fn separation_tells_tight_clusters_from_overlapping_ones() {
        let cluster = |spread: f32| Embedded {
            points: (0..70)
                .map(|i| {
                    let class = i % 7;
                    // Varies within a class: the k-th face of each class gets the same offset.
                    let jitter = spread * ((i / 7) as f32 * 2.1).sin();
                    vec![10.0 * class as f32 + jitter, jitter]
                })
                .collect(),
            labels: (0..70).map(|i| i % 7).collect(),
        };
        let tight = Separation::measure(&cluster(0.5));
        let loose = Separation::measure(&cluster(20.0));
        assert_eq!(tight.nearest_mean_accuracy, 1.0);
        assert!(tight.ratio() < 0.01, "{tight:?}");
        assert!(loose.ratio() > 1.0, "{loose:?}");
        assert!(loose.nearest_mean_accuracy < 0.5, "{loose:?}");
    }
}
