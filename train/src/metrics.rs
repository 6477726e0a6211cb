//! Classification metrics that stay honest on imbalanced data.

use std::fmt;

use fer_protocol::Expression;

const K: usize = Expression::COUNT;

/// Evaluation of predictions against labels.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Metrics {
    /// Number of evaluated images.
    pub count: usize,
    /// Fraction of images classified correctly.
    pub accuracy: f64,
    /// Mean of the per-class recalls over the classes present: the honest figure on imbalanced
    /// data, where always answering "neutral" already gives a good accuracy.
    pub mean_class_accuracy: f64,
    /// Unweighted mean of the per-class F1 scores over the classes present.
    pub macro_f1: f64,
    /// Recall of each class (`None` where the class has no image), in class-index order.
    pub per_class_recall: [Option<f64>; K],
    /// `confusion[true][predicted]` counts.
    pub confusion: [[usize; K]; K],
}

impl Metrics {
    /// Metrics of the predictions `argmax(logits + offset)` against the samples' labels.
    pub fn of_logits(logits: &[[f32; K]], offset: [f32; K], samples: &[crate::dataset::Sample]) -> Self {
        Self::from_pairs(logits.iter().zip(samples).map(|(row, sample)| {
            let adjusted: [f32; K] = std::array::from_fn(|k| row[k] + offset[k]);
            (sample.label.index(), fer_protocol::scores::argmax(&adjusted))
        }))
    }

    /// Metrics of `(label, prediction)` pairs, as class indices.
    pub fn from_pairs(pairs: impl IntoIterator<Item = (usize, usize)>) -> Self {
        let mut confusion = [[0usize; K]; K];
        for (label, prediction) in pairs {
            confusion[label][prediction] += 1;
        }
        Self::from_confusion(confusion)
    }

    /// Metrics of a confusion matrix.
    pub fn from_confusion(confusion: [[usize; K]; K]) -> Self {
        let count: usize = confusion.iter().flatten().sum();
        let correct: usize = (0..K).map(|k| confusion[k][k]).sum();
        let mut per_class_recall = [None; K];
        let mut f1s = Vec::new();
        for k in 0..K {
            let actual: usize = confusion[k].iter().sum();
            if actual == 0 {
                continue;
            }
            let predicted: usize = (0..K).map(|t| confusion[t][k]).sum();
            let hit = confusion[k][k] as f64;
            let recall = hit / actual as f64;
            let precision = if predicted == 0 { 0.0 } else { hit / predicted as f64 };
            per_class_recall[k] = Some(recall);
            f1s.push(if precision + recall == 0.0 {
                0.0
            } else {
                2.0 * precision * recall / (precision + recall)
            });
        }
        let recalls: Vec<f64> = per_class_recall.iter().flatten().copied().collect();
        let mean = |v: &[f64]| {
            if v.is_empty() {
                0.0
            } else {
                v.iter().sum::<f64>() / v.len() as f64
            }
        };
        Self {
            count,
            accuracy: if count == 0 { 0.0 } else { correct as f64 / count as f64 },
            mean_class_accuracy: mean(&recalls),
            macro_f1: mean(&f1s),
            per_class_recall,
            confusion,
        }
    }
}

/// Area under the ROC curve of `scores` for telling `positive` cases from the rest: the chance
/// that a random positive scores higher than a random negative, ties counting half
/// (Mann-Whitney). `None` when either side is empty.
pub fn auroc(scores: &[f32], positive: &[bool]) -> Option<f64> {
    assert_eq!(scores.len(), positive.len(), "one score per case");
    let positives = positive.iter().filter(|&&p| p).count();
    let negatives = positive.len() - positives;
    if positives == 0 || negatives == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum of the positives' ranks (1-based), tied scores sharing their mean rank.
    let mut rank_sum = 0.0;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let mean_rank = (start + 1 + end) as f64 / 2.0;
        rank_sum += mean_rank * order[start..end].iter().filter(|&&i| positive[i]).count() as f64;
        start = end;
    }
    let (p, n) = (positives as f64, negatives as f64);
    Some((rank_sum - p * (p + 1.0) / 2.0) / (p * n))
}

impl fmt::Display for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "images:              {}", self.count)?;
        writeln!(f, "accuracy:            {:.2} %", 100.0 * self.accuracy)?;
        writeln!(f, "mean class accuracy: {:.2} %", 100.0 * self.mean_class_accuracy)?;
        writeln!(f, "macro-F1:            {:.2} %", 100.0 * self.macro_f1)?;
        writeln!(f, "per-class recall:")?;
        for e in Expression::ALL {
            match self.per_class_recall[e.index()] {
                Some(r) => writeln!(f, "  {:<10} {:6.2} %", e.name(), 100.0 * r)?,
                None => writeln!(f, "  {:<10}    n/a (no images)", e.name())?,
            }
        }
        writeln!(f, "confusion matrix (rows: true, columns: predicted):")?;
        write!(f, "  {:<10}", "")?;
        for e in Expression::ALL {
            write!(f, " {:>6}", &e.name()[..e.name().len().min(6)])?;
        }
        for e in Expression::ALL {
            write!(f, "\n  {:<10}", e.name())?;
            for n in self.confusion[e.index()] {
                write!(f, " {n:>6}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imbalanced_majority_guess_is_exposed() {
        // 8 neutral, 2 fear; the model always says neutral.
        let pairs = (0..8).map(|_| (6, 6)).chain((0..2).map(|_| (1, 6)));
        let m = Metrics::from_pairs(pairs);
        assert!((m.accuracy - 0.8).abs() < 1e-12);
        assert!((m.mean_class_accuracy - 0.5).abs() < 1e-12);
        // F1: neutral p = 0.8, r = 1 → 8/9; fear 0 → macro 4/9.
        assert!((m.macro_f1 - 4.0 / 9.0).abs() < 1e-12);
        assert_eq!(m.per_class_recall[1], Some(0.0));
        assert_eq!(m.per_class_recall[0], None);
        assert_eq!(m.confusion[1][6], 2);
        assert!(m.to_string().contains("n/a"));
    }

    #[test]
    fn auroc_counts_ordered_pairs_and_half_ties() {
        // Positives 0.9, 0.4; negatives 0.5, 0.1: of the 4 pairs, 3 are ordered right.
        assert_eq!(auroc(&[0.9, 0.5, 0.4, 0.1], &[true, false, true, false]), Some(0.75));
        assert_eq!(auroc(&[2.0, 1.0], &[true, false]), Some(1.0));
        assert_eq!(auroc(&[1.0, 2.0], &[true, false]), Some(0.0));
        // A tie between a positive and a negative counts half: (1 + 0.5) / 2.
        assert_eq!(auroc(&[3.0, 1.0, 1.0], &[true, true, false]), Some(0.75));
        assert_eq!(auroc(&[1.0, 2.0], &[true, true]), None);
    }
}
