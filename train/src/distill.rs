//! Distillation from our own trained runs: the teachers' averaged softmax on each training face,
//! blended into the face's target distribution before training starts.
//!
//! The teachers see each face once, as loaded (and mirrored, with flip averaging), rather than
//! every augmented view: their distributions are computed in seconds and a step costs what it
//! always did, and the augmentation here (small rotations, shifts, flips) keeps the face's
//! expression, so the clean face's distribution is a fair target for its views.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use fer_protocol::{Expression, scores};
use tracing::info;

use crate::config::{Distill, TrainConfig};
use crate::dataset::Sample;
use crate::run::{Run, files, read_json};

const K: usize = Expression::COUNT;

/// One teacher's distribution on each face at temperature `t`: its softmax of `logits`, or with
/// `mirrored` (its logits on the mirrored faces) the mean of both softmaxes, as the sensor's flip
/// averaging computes it.
pub fn teacher_distribution(logits: &[[f32; K]], mirrored: Option<&[[f32; K]]>, t: f32) -> Vec<[f32; K]> {
    if let Some(mirrored) = mirrored {
        assert_eq!(logits.len(), mirrored.len(), "one mirrored row per face");
    }
    let cool = |z: &[f32; K]| z.map(|z| z / t);
    logits
        .iter()
        .enumerate()
        .map(|(i, z)| {
            let mut p = [0.0; K];
            match mirrored {
                Some(mirrored) => scores::flip_averaged(&cool(z), &cool(&mirrored[i]), &mut p),
                None => scores::softmax(&cool(z), &mut p),
            }
            p
        })
        .collect()
}

/// What a teacher's run folder held when a student's targets were computed from it, kept in the
/// student's `teachers.json`: a teacher that trained on, or a folder that came to hold another
/// run, would change the targets between sittings of one student without a word.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TeacherMark {
    /// The teacher's run folder, as the student's config names it.
    pub run: PathBuf,
    /// Its epochs trained.
    pub epochs_done: usize,
    /// Its settings.
    pub config: TrainConfig,
}

/// The teachers' marks as their run folders are now.
pub fn teacher_marks(distill: &Distill) -> Result<Vec<TeacherMark>> {
    distill
        .teachers
        .iter()
        .map(|teacher| {
            let run = Run::at(teacher);
            let mark = || -> Result<TeacherMark> {
                Ok(TeacherMark {
                    run: teacher.clone(),
                    epochs_done: run.epochs_done()?,
                    config: run.config()?,
                })
            };
            mark().with_context(|| format!("teacher {}", teacher.display()))
        })
        .collect()
}

/// Refuses to go on with a student whose teachers are not what they were when its targets were
/// first computed (`marks` are theirs now). A student with no `teachers.json` predates the check.
pub fn check_teachers(student: &Run, marks: &[TeacherMark]) -> Result<()> {
    let path = student.file(files::TEACHERS);
    if !path.is_file() {
        return Ok(());
    }
    let then: Vec<TeacherMark> = read_json(&path)?;
    for (then, now) in then.iter().zip(marks) {
        let what = if then.run != now.run {
            format!("its teacher was {}", then.run.display())
        } else if then.epochs_done != now.epochs_done {
            format!(
                "it held epoch {} then and holds epoch {} now",
                then.epochs_done, now.epochs_done
            )
        } else if then.config != now.config {
            "its config.json has changed".to_string()
        } else {
            continue;
        };
        bail!(
            "teacher {}: not the run this student started from ({what}), so the targets would change \
             mid-run; restore the teacher as it was or train a new student",
            now.run.display()
        );
    }
    if then.len() != marks.len() {
        bail!(
            "{}: {} teachers, and this student has {}",
            path.display(),
            then.len(),
            marks.len()
        );
    }
    Ok(())
}

/// Replaces each sample's votes (or one-hot label, where it has no votes) with its blend with the
/// teachers' mean distribution on the face; `teachers` holds each teacher's
/// [`teacher_distribution`], one row per sample. Logs how often each teacher agrees with the labels.
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
            for (s, p) in sum.iter_mut().zip(row) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_softens_and_keeps_the_order() {
        let z = [3.0, 1.0, 0.0, -1.0, 0.5, 2.0, -2.0];
        let (sharp, soft) = (
            teacher_distribution(&[z], None, 1.0)[0],
            teacher_distribution(&[z], None, 4.0)[0],
        );
        for p in [sharp, soft] {
            assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert_eq!(scores::argmax(&p), 0);
        }
        assert!(soft[0] < sharp[0] && soft[6] > sharp[6]);
    }

    #[test]
    fn a_flipped_teacher_is_the_mean_of_both_views() {
        let z = [3.0, 1.0, 0.0, -1.0, 0.5, 2.0, -2.0];
        let m = [0.0, 2.5, 0.0, 1.0, 0.5, -2.0, 0.0];
        for t in [1.0, 2.0] {
            let (one, other) = (
                teacher_distribution(&[z], None, t)[0],
                teacher_distribution(&[m], None, t)[0],
            );
            let both = teacher_distribution(&[z], Some(&[m]), t)[0];
            for k in 0..K {
                assert!((both[k] - (one[k] + other[k]) / 2.0).abs() < 1e-6, "{both:?}");
            }
        }
    }
}
