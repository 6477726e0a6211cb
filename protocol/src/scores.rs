//! What a row of class scores says: its top class and its probabilities.
//!
//! One reading for training's reports, the export's agreement gate and the device's decisions, so
//! that a tie or a NaN counts the same everywhere.

/// Index of the largest value: the first of equal ones, never a NaN, 0 for an empty row.
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
        .0
}

/// Numerically stable softmax of `logits` into `out` (of the same length).
#[cfg(feature = "std")]
pub fn softmax(logits: &[f32], out: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = (l - max).exp();
        sum += *o;
    }
    out.iter_mut().for_each(|o| *o /= sum);
}

/// The probabilities of a face and of its mirror image, averaged (test-time flip averaging): the
/// mean of the two softmaxes, so a confident view counts for more than a hesitant one.
#[cfg(feature = "std")]
pub fn flip_averaged(logits: &[f32], mirrored: &[f32], out: &mut [f32]) {
    let mut other = std::vec![0.0; mirrored.len()];
    softmax(logits, out);
    softmax(mirrored, &mut other);
    for (o, m) in out.iter_mut().zip(&other) {
        *o = (*o + m) / 2.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argmax_takes_the_first_of_ties_and_never_a_nan() {
        assert_eq!(argmax(&[0.1, 0.7, 0.7, 0.2]), 1);
        assert_eq!(argmax(&[f32::NAN, 0.3, f32::NAN]), 1);
        assert_eq!(argmax(&[3.0]), 0);
        assert_eq!(argmax(&[]), 0);
    }

    #[cfg(feature = "std")]
    #[test]
    fn flip_averaging_is_the_mean_of_both_softmaxes() {
        let mut p = [0.0; 2];
        flip_averaged(&[0.0, 0.0], &[2.0f32.ln(), 0.0], &mut p);
        assert!((p[0] - (0.5 + 2.0 / 3.0) / 2.0).abs() < 1e-6, "{p:?}");
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    }

    #[cfg(feature = "std")]
    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut p = [0.0; 3];
        softmax(&[1000.0, 1001.0, 999.0], &mut p);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(argmax(&p), 1);
        assert!(p[0] > p[2]);
        // Less the max, the logits are (−1, 0, −2): p₀ = e⁻¹ / (e⁻¹ + 1 + e⁻²).
        let e = core::f32::consts::E;
        assert!((p[0] - (1.0 / e) / (1.0 / e + 1.0 + 1.0 / (e * e))).abs() < 1e-6);
    }
}
