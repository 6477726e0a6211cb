//! A finished run's answers face by face on its valid split: what the comparison's paired
//! statistics resample, and what says whether the distance to the nearest class center flags
//! the model's own errors (the sensor's `uncertain` relies on it).

use anyhow::{Context, Result, ensure};
use burn::prelude::*;
use fer_protocol::Expression;
use fer_protocol::scores::{argmax, softmax};

use crate::batch::eval_batch;
use crate::dataset::Split;
use crate::embedding::class_mean_centers;
use crate::metrics::{Metrics, auroc};
use crate::run::{Run, files, read_json, write_json};
use crate::training::load_split;

/// One run's answers on its valid split, face by face in the split's order.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Predictions {
    /// True class index of each face; a record ([`write_record`]) leaves them out, since they are
    /// the data set's, and [`Self::read`] reads them back from it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub labels: Vec<usize>,
    /// Predicted class index (the logits' argmax).
    pub predicted: Vec<usize>,
    /// Squared distance of each face's embedding to the nearest class center.
    pub nearest_center: Vec<f32>,
    /// Squared distance to the second-nearest center (empty in files written before it was
    /// kept; [`Self::load_or_write`] rewrites those).
    #[serde(default)]
    pub second_center: Vec<f32>,
    /// The largest softmax probability of each face.
    pub confidence: Vec<f32>,
    /// Whether those centers are the trained TCL centers; `false` for a cross-entropy run, whose
    /// centers never train: its distances are to the class means of the training split, as
    /// `fer-export` gives such a run.
    pub trained_centers: bool,
}

impl Predictions {
    /// Computes a finished run's predictions on its valid split.
    pub fn of_run(run: &Run, device: &Device) -> Result<Self> {
        // An unfinished run's checkpoint is not the model its report will describe.
        ensure!(
            run.finished(),
            "{} is not finished (no {}): finish it with `fer-train train --resume` first",
            run.dir().display(),
            files::REPORT
        );
        let (model, config) = run.load_model(device)?;
        let trained_centers = config.tcl.is_some();
        let (model, present) = if trained_centers {
            (model, [true; Expression::COUNT])
        } else {
            class_mean_centers(model, &load_split(&config, &config.data, Split::Train)?, device)
        };
        let samples = load_split(&config, config.valid_spec(), Split::Valid)?;
        let model = model.valid();
        let mut out = Self {
            labels: Vec::with_capacity(samples.len()),
            predicted: Vec::with_capacity(samples.len()),
            nearest_center: Vec::with_capacity(samples.len()),
            second_center: Vec::with_capacity(samples.len()),
            confidence: Vec::with_capacity(samples.len()),
            trained_centers,
        };
        let rows =
            |t: Tensor<2>| -> Vec<f32> { t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 tensor") };
        for chunk in samples.chunks(256) {
            let batch = eval_batch(chunk);
            let (inputs, _) = batch.to_tensors(device);
            let forward = model.forward(inputs);
            let distances = rows(model.center_distances(forward.embedding));
            let logits = rows(forward.logits);
            for (row, distance) in logits
                .chunks_exact(Expression::COUNT)
                .zip(distances.chunks_exact(Expression::COUNT))
            {
                out.predicted.push(argmax(row));
                out.confidence.push(confidence(row));
                // A class the training split lacks has no center to be near.
                let (nearest, second) = distance.iter().zip(present).filter(|(_, present)| *present).fold(
                    (f32::INFINITY, f32::INFINITY),
                    |(nearest, second), (&d, _)| {
                        if d < nearest {
                            (d, nearest)
                        } else {
                            (nearest, second.min(d))
                        }
                    },
                );
                out.nearest_center.push(nearest);
                out.second_center.push(second);
            }
            out.labels.extend(batch.labels.iter().map(|&l| l as usize));
        }
        Ok(out)
    }

    /// Reads `RUN/predictions.json`, computing and writing it first when the run has none.
    pub fn load_or_write(run: &Run, device: &Device) -> Result<Self> {
        if let Some(predictions) = Self::read(run)?
            && predictions.second_center.len() == predictions.labels.len()
        {
            return Ok(predictions);
        }
        let predictions =
            Self::of_run(run, device).with_context(|| format!("predicting with {}", run.dir().display()))?;
        write_json(&run.file(files::PREDICTIONS), &predictions)?;
        Ok(predictions)
    }

    /// Reads `RUN/predictions.json` if the run has one.
    pub fn read(run: &Run) -> Result<Option<Self>> {
        let path = run.file(files::PREDICTIONS);
        if !path.is_file() {
            return Ok(None);
        }
        let mut predictions: Self = read_json(&path)?;
        if predictions.labels.is_empty() && !predictions.predicted.is_empty() {
            predictions.labels = labels_from_data(run, &predictions.predicted)?;
        }
        let n = predictions.labels.len();
        ensure!(
            predictions.predicted.len() == n
                && predictions.nearest_center.len() == n
                && [0, n].contains(&predictions.second_center.len())
                && predictions.confidence.len() == n,
            "{}: labels, predictions, distances and confidences differ in length",
            path.display()
        );
        Ok(Some(predictions))
    }

    /// Metrics over the faces at `faces` (indices into the split, repeats allowed: a resample).
    pub fn metrics(&self, faces: impl IntoIterator<Item = usize>) -> Metrics {
        Metrics::from_pairs(faces.into_iter().map(|i| (self.labels[i], self.predicted[i])))
    }

    /// How well the nearest-center distance flags the model's own wrong answers: the AUROC of
    /// distance against "wrong" (0.5: no better than chance; `None` if all right or all wrong).
    pub fn error_auroc(&self) -> Option<f64> {
        auroc(&self.nearest_center, &self.wrong())
    }

    /// The same for how nearly the face sits between two centers, nearest over second-nearest
    /// distance (1: halfway), which does not grow with the embedding's scale as the distance
    /// does (`None` for a file without second distances).
    pub fn ratio_error_auroc(&self) -> Option<f64> {
        if self.second_center.len() != self.labels.len() {
            return None;
        }
        let ratio: Vec<f32> = self
            .nearest_center
            .iter()
            .zip(&self.second_center)
            .map(|(d1, d2)| if *d2 > 0.0 { d1 / d2 } else { 1.0 })
            .collect();
        auroc(&ratio, &self.wrong())
    }

    /// The same for a low top probability (`1 - confidence`), the other flag the sensor has: the
    /// yardstick for [`Self::error_auroc`].
    pub fn confidence_error_auroc(&self) -> Option<f64> {
        let doubt: Vec<f32> = self.confidence.iter().map(|c| 1.0 - c).collect();
        auroc(&doubt, &self.wrong())
    }

    /// What flagging every face whose top probability is under `threshold` does, as the sensor's
    /// `decide.min_confidence` does with a face's first frame.
    pub fn flag_at(&self, threshold: f32) -> Flag {
        let wrong = self.wrong();
        let (mut flagged_right, mut flagged_wrong) = (0usize, 0usize);
        for (&c, &w) in self.confidence.iter().zip(&wrong) {
            if c < threshold {
                if w {
                    flagged_wrong += 1;
                } else {
                    flagged_right += 1;
                }
            }
        }
        let errors = wrong.iter().filter(|&&w| w).count();
        let right = wrong.len() - errors;
        let share = |k: usize, of: usize| if of == 0 { 0.0 } else { k as f64 / of as f64 };
        Flag {
            threshold,
            flagged: share(flagged_right + flagged_wrong, wrong.len()),
            right_flagged: share(flagged_right, right),
            errors_flagged: share(flagged_wrong, errors),
            accuracy_unflagged: share(right - flagged_right, wrong.len() - flagged_right - flagged_wrong),
        }
    }

    fn wrong(&self) -> Vec<bool> {
        self.labels.iter().zip(&self.predicted).map(|(l, p)| l != p).collect()
    }
}

/// How a top-probability threshold flags faces `uncertain`: see [`Predictions::flag_at`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Flag {
    /// Faces under this top probability are flagged.
    pub threshold: f32,
    /// Share of all faces flagged.
    pub flagged: f64,
    /// Share of the right answers flagged: confident enough readings hidden (false `uncertain`).
    pub right_flagged: f64,
    /// Share of the wrong answers flagged: errors caught.
    pub errors_flagged: f64,
    /// Accuracy over the faces not flagged.
    pub accuracy_unflagged: f64,
}

impl std::fmt::Display for Flag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "under {:.2}: {:.1} % of faces flagged, {:.1} % of right answers (false uncertain), {:.1} % \
            of errors; accuracy of the rest {:.2} %",
            self.threshold,
            100.0 * self.flagged,
            100.0 * self.right_flagged,
            100.0 * self.errors_flagged,
            100.0 * self.accuracy_unflagged
        )
    }
}

/// Writes a finished run's record to `to`: its configuration, epochs, report and predictions
/// (computed first if missing), without the checkpoint and without the labels. `compare` and
/// `curves` read a record as they read the run, so a comparison can span sittings that keep
/// nothing but the repository; the labels are the data set's, which stays out of it.
pub fn write_record(run: &Run, to: &Run, device: &Device) -> Result<()> {
    let predictions = Predictions::load_or_write(run, device)?;
    to.create()?;
    let copy = |file: &str| {
        std::fs::copy(run.file(file), to.file(file))
            .with_context(|| format!("copying {} to {}", run.file(file).display(), to.dir().display()))
    };
    copy(files::CONFIG)?;
    copy(files::METRICS)?;
    write_json(
        &to.file(files::PREDICTIONS),
        &Predictions {
            labels: Vec::new(),
            ..predictions.clone()
        },
    )?;
    // The report last: a record with a report is a whole one (scripts/compare.sh keeps it).
    copy(files::REPORT)?;
    // Proves now, while the run is at hand, that the labels come back.
    let back = Predictions::read(to).and_then(|back| {
        ensure!(
            back.as_ref() == Some(&predictions),
            "its predictions do not read back as the run's"
        );
        Ok(())
    });
    if let Err(error) = back {
        std::fs::remove_file(to.file(files::REPORT))?;
        return Err(error.context(format!(
            "{} is not a faithful record of {}",
            to.dir().display(),
            run.dir().display()
        )));
    }
    Ok(())
}

/// The labels a record left out, read from its run's valid data. They must give back, with the
/// recorded answers, the confusion matrix of the run's report, which other faces or the same
/// faces in another order would not.
fn labels_from_data(run: &Run, predicted: &[usize]) -> Result<Vec<usize>> {
    let config = run.config()?;
    let samples = load_split(&config, config.valid_spec(), Split::Valid).with_context(|| {
        format!(
            "{}: a record keeps no labels; reading them from its valid data",
            run.dir().display()
        )
    })?;
    let labels: Vec<usize> = samples.iter().map(|s| s.label.index()).collect();
    let report = run.report()?;
    ensure!(
        labels.len() == predicted.len()
            && Metrics::from_pairs(labels.iter().copied().zip(predicted.iter().copied())).confusion == report.confusion,
        "{}: its valid data ({} faces) does not give its report's confusion matrix with its answers ({}): \
        not the faces it was evaluated on",
        run.dir().display(),
        labels.len(),
        predicted.len()
    );
    Ok(labels)
}

/// The largest softmax probability of a row of logits.
fn confidence(logits: &[f32]) -> f32 {
    let mut p = vec![0.0; logits.len()];
    softmax(logits, &mut p);
    p[argmax(&p)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_flags_errors_through_the_auroc() {
        let p = Predictions {
            labels: vec![0, 1, 2, 3],
            predicted: vec![0, 1, 0, 1],
            // The two wrong answers are the two farthest faces: a perfect flag.
            nearest_center: vec![1.0, 2.0, 5.0, 4.0],
            // Ratios 0.1, 0.2, 0.5, 0.4: the same order as the distances.
            second_center: vec![10.0; 4],
            // Confidence ranks one right answer below a wrong one: 3 of 4 pairs ordered right.
            confidence: vec![0.9, 0.3, 0.2, 0.5],
            trained_centers: true,
        };
        assert_eq!(p.error_auroc(), Some(1.0));
        assert_eq!(p.confidence_error_auroc(), Some(0.75));
        assert_eq!(p.ratio_error_auroc(), Some(1.0));
        let older = Predictions {
            second_center: Vec::new(),
            ..p.clone()
        };
        assert_eq!(older.ratio_error_auroc(), None);
        assert!((confidence(&[0.0, 0.0]) - 0.5).abs() < 1e-6);
        assert!((confidence(&[2.0f32.ln(), 0.0]) - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(p.metrics([0, 0, 2]).accuracy, 2.0 / 3.0);
        // Under 0.4: the right answer at 0.3 and the wrong one at 0.2.
        let flag = p.flag_at(0.4);
        assert_eq!(
            (
                flag.flagged,
                flag.right_flagged,
                flag.errors_flagged,
                flag.accuracy_unflagged
            ),
            (0.5, 0.5, 0.5, 0.5)
        );
    }
}
