//! Distillation from our own trained runs: the teachers' averaged softmax on each training face,
//! blended into the face's target distribution before training starts.
//!
//! The teachers see each face once, as loaded (no augmentation), rather than every augmented
//! view: their distributions are computed in seconds and a step costs what it always did, and
//! the augmentation here (small rotations, shifts, flips) keeps the face's expression, so the
//! clean face's distribution is a fair target for its views.

use fer_protocol::{Expression, scores};
use tracing::info;

use crate::config::Distill;
use crate::dataset::Sample;

const K: usize = Expression::COUNT;

/// Replaces each sample's votes (or one-hot label, where it has no votes) with its blend with the
/// teachers' distribution on the face; `teachers` holds each teacher's logits, one row per sample.
/// Logs how often each teacher agrees with the labels.
pub fn blend_teachers(distill: &Distill, teachers: &[Vec<[f32; K]>], samples: &mut [Sample]) {
    let mut taught = vec![[0.0f32; K]; samples.len()];
    for (name, rows) in distill.teachers.iter().zip(teachers) {
        let agree = rows
            .iter()
            .zip(samples.iter())
            .filter(|(row, s)| scores::argmax(*row) == s.label.index())
            .count();
        info!(
            "teacher {}: agrees with {:.2} % of the {} training labels",
            name.display(),
            100.0 * agree as f64 / samples.len().max(1) as f64,
            samples.len()
        );
        for (sum, row) in taught.iter_mut().zip(rows) {
            for (s, p) in sum.iter_mut().zip(softmax(row, distill.temperature)) {
                *s += p / teachers.len() as f32;
            }
        }
    }
    for (sample, teacher) in samples.iter_mut().zip(&taught) {
        let own = sample.votes.unwrap_or_else(|| {
            let mut one_hot = [0.0; K];
            one_hot[sample.label.index()] = 1.0;
            one_hot
        });
        sample.votes = Some(std::array::from_fn(|k| {
            (1.0 - distill.weight) * own[k] + distill.weight * teacher[k]
        }));
    }
}

/// `softmax(z / t)`, through the one softmax training, export and device share.
fn softmax(z: &[f32; K], t: f32) -> [f32; K] {
    let mut p = [0.0; K];
    scores::softmax(&z.map(|z| z / t), &mut p);
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_softens_and_keeps_the_order() {
        let z = [3.0, 1.0, 0.0, -1.0, 0.5, 2.0, -2.0];
        let (sharp, soft) = (softmax(&z, 1.0), softmax(&z, 4.0));
        for p in [sharp, soft] {
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert_eq!(scores::argmax(&p), 0);
        }
        assert!(soft[0] < sharp[0] && soft[6] > sharp[6]);
    }
}
