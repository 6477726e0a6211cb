//! Losses: cross-entropy (the baseline) and the triplet-center loss (TCL) with its three ways of
//! choosing the negative.
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

use crate::model::squared_distances;

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
    t.into_data().try_to_vec::<bool>().expect("bool tensor")
}

#[cfg(test)]
mod tests {
    use super::*;

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
