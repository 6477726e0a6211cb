//! Losses: cross-entropy (the baseline) on hard or vote-distribution targets, with class weights
//! and logit adjustment against imbalance, and the triplet-center loss (TCL) with its three ways
//! of choosing the negative.
//!
//! The cross-entropy is one function of target rows built on the host ([`Targets`]): a one-hot
//! label or, where the data set has annotator votes (FER+), their normalised distribution; label
//! smoothing mixes in the uniform distribution; a class weight scales the whole row. Logit
//! adjustment (Menon et al., 2021) adds `τ·log π_k` to the logits inside the loss only, so the
//! network learns to overcome the prior and inference needs no change.
//!
//! TCL acts on the embedding `f_i` over all its dimensions, with learnable class centers `c_k`:
//!
//! `L_TCL = mean_i max(0, d(f_i, c_{y_i}) − d(f_i, n_i) + m)`, `d` the squared Euclidean distance.
//!
//! The negative `n_i` (this project's precise reading of the paper's three strategy names):
//! - **fully-synthesized**: built from centers only — the nearest center of another class,
//!   `argmin_{k≠y_i} d(f_i, c_k)`.
//! - **semi-synthesized**: half real, half synthetic — the hardest real negative in the batch,
//!   `j* = argmin_{j: y_j≠y_i} d(f_i, f_j)`, mixed with its class center:
//!   `n_i = α·f_{j*} + (1−α)·c_{y_{j*}}`. Falls back to fully-synthesized for a sample whose batch
//!   holds no other class.
//! - **prediction-based**: the center of the class the classifier finds most confusable,
//!   `c_{p_i}`, `p_i = argmax_{k≠y_i} logit_i(k)` (the wrong prediction when the model errs, the
//!   runner-up when it is right).
//!
//! The choice of negative is made on detached values (it is a selection, not a function to
//! differentiate); the distances to the chosen negatives then carry gradients to the embeddings,
//! to the centers and, for semi-synthesized negatives, to the real negative sample too.

use burn::prelude::*;
use burn::tensor::activation::log_softmax;
use fer_protocol::Expression;

use crate::dataset::{ClassCounts, Sample};
use crate::model::squared_distances;

const K: usize = Expression::COUNT;

/// How the cross-entropy term's targets are made; part of the training configuration.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TargetConfig {
    /// Train against the annotators' vote distribution where a sample has one (FER+); other
    /// samples keep their one-hot label.
    pub votes: bool,
    /// Label smoothing ε: the target is `(1 − ε)·q + ε/K`.
    pub smoothing: f32,
    /// Class weight exponent p: a sample of class k weighs `∝ n_k^(−p)` (0: unweighted, 1:
    /// inverse frequency), normalised so the mean weight over the training set is 1.
    pub class_weight_power: f32,
}

/// Builds cross-entropy target rows for training samples.
#[derive(Clone, Debug)]
pub struct Targets {
    config: TargetConfig,
    weights: [f32; K],
}

impl Targets {
    /// Targets for a training set with these class counts.
    pub fn new(config: TargetConfig, counts: &ClassCounts) -> Self {
        let raw = counts.0.map(|n| {
            if n == 0 {
                0.0
            } else {
                (n as f64).powf(-config.class_weight_power as f64)
            }
        });
        let mean: f64 =
            counts.0.iter().zip(raw).map(|(&n, w)| n as f64 * w).sum::<f64>() / counts.total().max(1) as f64;
        Self {
            config,
            weights: raw.map(|w| (w / mean) as f32),
        }
    }

    /// The weight of each class, in class-index order.
    pub fn class_weights(&self) -> [f32; K] {
        self.weights
    }

    /// The target row of one sample.
    pub fn of(&self, sample: &Sample) -> [f32; K] {
        let mut q = [0.0; K];
        match sample.votes.filter(|_| self.config.votes) {
            Some(votes) => q = votes,
            None => q[sample.label.index()] = 1.0,
        }
        let (eps, weight) = (self.config.smoothing, self.weights[sample.label.index()]);
        q.map(|q| weight * ((1.0 - eps) * q + eps / K as f32))
    }
}

/// The logit adjustment `τ·log π_k` for a training set with these class counts (`π` its class
/// frequencies); a class with no sample is treated as having one.
pub fn logit_adjustment(tau: f32, counts: &ClassCounts) -> [f32; K] {
    let total = counts.0.iter().map(|&n| n.max(1)).sum::<usize>() as f64;
    counts.0.map(|n| (tau as f64 * (n.max(1) as f64 / total).ln()) as f32)
}

/// Cross-entropy of `logits + adjustment` (`[B, K]` + `[1, K]`) against target rows `[B, K]`:
/// `mean_i −Σ_k t_ik · log softmax(z_i + a)_k`.
pub fn cross_entropy(logits: Tensor<2>, adjustment: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    let [b, _] = logits.dims();
    (log_softmax(logits + adjustment, 1) * targets).sum().neg() / b as f32
}

/// A distance larger than any real one, used to mask out a sample's own class.
const FAR: f32 = 1e30;

/// How the TCL negative is chosen.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case", tag = "strategy")]
pub enum Negatives {
    /// The nearest other-class center.
    FullySynthesized,
    /// `α·(hardest in-batch negative) + (1−α)·(its class center)`.
    SemiSynthesized {
        /// Weight of the real sample.
        alpha: f32,
    },
    /// The center of the classifier's most confusable other class.
    PredictionBased,
}

/// The loss value with the negatives it chose (for tests and diagnostics).
pub struct TclOutput {
    /// Mean hinge loss, a scalar tensor `[1]`.
    pub loss: Tensor<1>,
    /// Per sample: the class of the negative center (fully-synthesized, prediction-based), or the
    /// batch index of the real negative (semi-synthesized; `None` where it fell back).
    pub chosen: Vec<Option<usize>>,
}

/// The triplet-center loss of a batch.
///
/// `embedding` `[B, D]`, `labels` `[B]`, `centers` `[K, D]`, `logits` `[B, K]`.
pub fn triplet_center_loss(
    embedding: Tensor<2>,
    labels: Tensor<1, Int>,
    centers: Tensor<2>,
    logits: Tensor<2>,
    negatives: Negatives,
    margin: f32,
) -> TclOutput {
    let [b, _] = embedding.dims();
    let [k, _] = centers.dims();
    let column = labels.clone().reshape([b, 1]);
    let to_centers = squared_distances(embedding.clone(), centers.clone()); // [B, K]
    let positive = to_centers.clone().gather(1, column.clone()); // [B, 1]
    let own_class = labels.clone().one_hot::<2>(k).equal_elem(1);

    let nearest_other_center = || {
        let choice = to_centers.clone().detach().mask_fill(own_class.clone(), FAR).argmin(1); // [B, 1]
        (to_centers.clone().gather(1, choice.clone()), choice)
    };

    let (negative, chosen) = match negatives {
        Negatives::FullySynthesized => {
            let (distance, choice) = nearest_other_center();
            (distance, indices(choice).into_iter().map(Some).collect())
        }
        Negatives::PredictionBased => {
            let choice = logits.detach().mask_fill(own_class, -FAR).argmax(1);
            (
                to_centers.gather(1, choice.clone()),
                indices(choice).into_iter().map(Some).collect(),
            )
        }
        Negatives::SemiSynthesized { alpha } => {
            let same_class = column
                .clone()
                .expand([b, b])
                .equal(labels.clone().reshape([1, b]).expand([b, b]));
            let (hardest, j) = squared_distances(embedding.clone().detach(), embedding.clone().detach())
                .mask_fill(same_class, FAR)
                .min_dim_with_indices(1);
            let has_other_class = hardest.lower_elem(FAR / 2.0); // [B, 1]
            let j = j.reshape([b]);
            let real = embedding.clone().select(0, j.clone());
            let synthetic = centers.select(0, labels.select(0, j.clone()));
            let mixed = real * alpha + synthetic * (1.0 - alpha);
            let semi = (embedding - mixed).square().sum_dim(1); // [B, 1]
            let (fallback, _) = nearest_other_center();
            let valid = bools(has_other_class.clone());
            let chosen = indices(j.reshape([b, 1]))
                .into_iter()
                .zip(valid)
                .map(|(j, ok)| ok.then_some(j))
                .collect();
            (fallback.mask_where(has_other_class, semi), chosen)
        }
    };
    let loss = (positive - negative + margin).clamp_min(0.0).mean();
    TclOutput { loss, chosen }
}

fn indices(t: Tensor<2, Int>) -> Vec<usize> {
    t.into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .expect("int tensor")
        .into_iter()
        .map(|i| i as usize)
        .collect()
}

fn bools(t: Tensor<2, Bool>) -> Vec<bool> {
    // Through integers: backends store booleans their own way (flex as bytes, wgpu as u32).
    indices(t.int()).into_iter().map(|v| v != 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(label: Expression, votes: Option<[f32; K]>) -> Sample {
        Sample {
            pixels: vec![0; 4],
            width: 2,
            height: 2,
            label,
            votes,
        }
    }

    #[test]
    fn vote_targets_smoothing_and_class_weights_by_hand() {
        // 6 neutral, 3 happiness, 0 of the rest; votes 0.75 neutral / 0.25 sadness.
        let counts = ClassCounts::of([Expression::Neutral; 6].into_iter().chain([Expression::Happiness; 3]));
        let mut votes = [0.0; K];
        votes[Expression::Neutral.index()] = 0.75;
        votes[Expression::Sadness.index()] = 0.25;
        let face = sample(Expression::Neutral, Some(votes));
        let config = TargetConfig {
            votes: true,
            smoothing: 0.0,
            class_weight_power: 0.0,
        };
        assert_eq!(Targets::new(config, &counts).of(&face), votes);
        let hard = Targets::new(TargetConfig { votes: false, ..config }, &counts).of(&face);
        assert_eq!(hard[Expression::Neutral.index()], 1.0);
        assert_eq!(hard.iter().sum::<f32>(), 1.0);
        // Smoothing 0.07 over 7 classes: 0.93·q + 0.01.
        let smooth = Targets::new(
            TargetConfig {
                smoothing: 0.07,
                ..config
            },
            &counts,
        )
        .of(&face);
        assert!((smooth[Expression::Neutral.index()] - (0.93 * 0.75 + 0.01)).abs() < 1e-6);
        assert!((smooth[Expression::Fear.index()] - 0.01).abs() < 1e-6);
        // Inverse frequency: raw weights 1/6 and 1/3, mean over the 9 samples (6/6 + 3/3)/9 = 2/9,
        // so neutral weighs 0.75 and happiness 1.5; the row is scaled as a whole.
        let weighted = Targets::new(
            TargetConfig {
                class_weight_power: 1.0,
                ..config
            },
            &counts,
        );
        let w = weighted.class_weights();
        let (neutral, happiness) = (w[Expression::Neutral.index()], w[Expression::Happiness.index()]);
        assert!((neutral - 0.75).abs() < 1e-6 && (happiness - 1.5).abs() < 1e-6, "{w:?}");
        assert!((weighted.of(&face)[Expression::Neutral.index()] - 0.75 * 0.75).abs() < 1e-6);
        // A sample without votes keeps its one-hot label.
        let happy = weighted.of(&sample(Expression::Happiness, None));
        assert_eq!(happy[Expression::Happiness.index()], 1.5);
    }

    #[test]
    fn soft_cross_entropy_and_logit_adjustment_by_hand() {
        let device = Device::flex();
        // Two classes padded to 7 with logits of −∞ in effect (−100): softmax over (0, ln 3) is
        // (1/4, 3/4).
        let mut row = [-100.0f32; K];
        row[0] = 0.0;
        row[1] = 3f32.ln();
        let logits = Tensor::<2>::from_data(TensorData::new(row.to_vec(), [1, K]), &device);
        let mut target = [0.0f32; K];
        target[0] = 0.5;
        target[1] = 0.5;
        let targets = Tensor::<2>::from_data(TensorData::new(target.to_vec(), [1, K]), &device);
        let zero = Tensor::<2>::zeros([1, K], &device);
        let value = |t: Tensor<1>| t.into_scalar::<f32>();
        // −(0.5·ln ¼ + 0.5·ln ¾) = 0.5·(ln 4 + ln 4/3).
        let expected = 0.5 * (4f32.ln() + (4.0f32 / 3.0).ln());
        let ce = value(cross_entropy(logits.clone(), zero, targets.clone()));
        assert!((ce - expected).abs() < 1e-5, "{ce} vs {expected}");

        // Counts 3:1 (empty classes count as one each: π = (3, 1, 1, 1, 1, 1, 1)/9) with τ = 1 add
        // ln(3/9) and ln(1/9): the adjusted logits (ln ⅓, ln 3 + ln ⅑ = ln ⅓) tie, so the
        // softmax is (½, ½) and the loss ln 2. The adjustment made the frequent class harder.
        let adjustment = logit_adjustment(1.0, &ClassCounts([3, 1, 0, 0, 0, 0, 0]));
        assert!((adjustment[0] - (3.0f32 / 9.0).ln()).abs() < 1e-6, "{adjustment:?}");
        assert!((adjustment[6] - (1.0f32 / 9.0).ln()).abs() < 1e-6, "{adjustment:?}");
        let a = Tensor::<2>::from_data(TensorData::new(adjustment.to_vec(), [1, K]), &device);
        let adjusted = value(cross_entropy(logits, a, targets));
        assert!((adjusted - 2f32.ln()).abs() < 1e-5, "{adjusted} vs ln 2");
    }

    /// Three classes in 2-D: centers at (0,0), (4,0), (0,3).
    fn setup(device: &Device) -> (Tensor<2>, Tensor<2>) {
        let centers = Tensor::<2>::from_floats([[0.0, 0.0], [4.0, 0.0], [0.0, 3.0]], device);
        // Sample 0 (class 0) at (1,0); sample 1 (class 1) at (3,1); sample 2 (class 0) at (0,2).
        let embedding = Tensor::<2>::from_floats([[1.0, 0.0], [3.0, 1.0], [0.0, 2.0]], device);
        (embedding, centers)
    }

    fn value(t: Tensor<1>) -> f32 {
        t.into_data().try_to_vec::<f32>().unwrap()[0]
    }

    #[test]
    fn fully_synthesized_by_hand() {
        let device = Device::flex();
        let (embedding, centers) = setup(&device);
        let labels = Tensor::<1, Int>::from_ints([0, 1, 0], &device);
        let logits = Tensor::<2>::zeros([3, 3], &device);
        let out = triplet_center_loss(embedding, labels, centers, logits, Negatives::FullySynthesized, 1.0);
        // Sample 0: d+ = 1; others: d(c1) = 9, d(c2) = 1+9 = 10 → c1, hinge max(0, 1-9+1) = 0.
        // Sample 1: d+ = 1+1 = 2; d(c0) = 10, d(c2) = 9+4 = 13 → c0, hinge 0.
        // Sample 2: d+ = 4; d(c1) = 16+4 = 20, d(c2) = 1 → c2, hinge 4-1+1 = 4.
        assert_eq!(out.chosen, [Some(1), Some(0), Some(2)]);
        assert!((value(out.loss) - 4.0 / 3.0).abs() < 1e-5);
    }

    #[test]
    fn semi_synthesized_by_hand_with_fallback() {
        let device = Device::flex();
        let (embedding, centers) = setup(&device);
        let labels = Tensor::<1, Int>::from_ints([0, 1, 0], &device);
        let logits = Tensor::<2>::zeros([3, 3], &device);
        let out = triplet_center_loss(
            embedding.clone(),
            labels,
            centers.clone(),
            logits.clone(),
            Negatives::SemiSynthesized { alpha: 0.5 },
            1.0,
        );
        // Sample 0: only other-class sample is 1 at (3,1), center c1 = (4,0) → n = (3.5, 0.5),
        //   d- = 2.5² + 0.5² = 6.5, d+ = 1 → hinge 0.
        // Sample 1: nearest class-0 sample: 0 at (1,0) (d 5) vs 2 at (0,2) (d 10) → 0;
        //   n = 0.5·(1,0) + 0.5·(0,0) = (0.5, 0), d- = 2.5² + 1 = 7.25, d+ = 2 → hinge 0.
        // Sample 2: j* = 1, n = (3.5, 0.5), d- = 3.5² + 1.5² = 14.5, d+ = 4 → hinge 0.
        assert_eq!(out.chosen, [Some(1), Some(0), Some(1)]);
        assert!(value(out.loss).abs() < 1e-6);

        // With a margin of 10: hinges 1-6.5+10 = 4.5, 2-7.25+10 = 4.75, 4-14.5+10 = 0 → mean 9.25/3.
        let labels = Tensor::<1, Int>::from_ints([0, 1, 0], &device);
        let out = triplet_center_loss(
            embedding.clone(),
            labels,
            centers.clone(),
            logits.clone(),
            Negatives::SemiSynthesized { alpha: 0.5 },
            10.0,
        );
        assert!((value(out.loss) - 9.25 / 3.0).abs() < 1e-5);

        // A batch of one class has no real negative: fall back to the nearest other center,
        // which gives the fully-synthesized hinge 4 for sample 2 (see above) and 0 for sample 0.
        let labels = Tensor::<1, Int>::from_ints([0, 0], &device);
        let both = embedding.select(0, Tensor::<1, Int>::from_ints([0, 2], &device));
        let out = triplet_center_loss(
            both,
            labels,
            centers,
            Tensor::zeros([2, 3], &device),
            Negatives::SemiSynthesized { alpha: 0.5 },
            1.0,
        );
        assert_eq!(out.chosen, [None, None]);
        assert!((value(out.loss) - 2.0).abs() < 1e-5);
    }

    #[test]
    fn prediction_based_by_hand() {
        let device = Device::flex();
        let (embedding, centers) = setup(&device);
        let labels = Tensor::<1, Int>::from_ints([0, 1, 0], &device);
        // Sample 0 is right (class 0 wins), runner-up class 2; sample 1 is wrong (predicts 2);
        // sample 2 is wrong (predicts 1).
        let logits = Tensor::<2>::from_floats([[5.0, 1.0, 2.0], [0.0, 1.0, 3.0], [0.0, 4.0, 1.0]], &device);
        let loss = |margin| {
            triplet_center_loss(
                embedding.clone(),
                labels.clone(),
                centers.clone(),
                logits.clone(),
                Negatives::PredictionBased,
                margin,
            )
        };
        let out = loss(1.0);
        assert_eq!(out.chosen, [Some(2), Some(2), Some(1)]);
        // Hinges: 1-10+1 → 0; 2-13+1 → 0; 4-20+1 → 0.
        assert!(value(out.loss).abs() < 1e-6);
        // With margin 10: 1-10+10 = 1, 2-13+10 → 0, 4-20+10 → 0; mean 1/3.
        assert!((value(loss(10.0).loss) - 1.0 / 3.0).abs() < 1e-5);
    }
}
