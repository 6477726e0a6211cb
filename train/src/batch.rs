//! Samples → model inputs: shared preprocessing, augmentation, shuffling and prefetching.
//!
//! Batches are built on a background thread in a fixed order, and each sample's augmentation is
//! seeded by `(seed, epoch, position)`, so a run is reproducible from its seed. (Burn's
//! multi-worker `DataLoader` hands batches over in whatever order its workers finish, which
//! breaks that; one prefetch thread keeps up with training here — see docs/model.md, "Data loading".)

use std::sync::Arc;
use std::sync::mpsc;

use burn::prelude::*;
use fer_protocol::{Expression, INPUT};
use rand::SeedableRng;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;

use crate::augment::Augment;
use crate::dataset::Sample;
use crate::loss::Targets;

/// A batch of model inputs and labels as plain vectors, ready to become tensors.
pub struct HostBatch {
    /// `[n, 1, 48, 48]` preprocessed inputs, row-major.
    pub inputs: Vec<f32>,
    /// Class indices, one per input.
    pub labels: Vec<i64>,
    /// Cross-entropy target rows, `[n, 7]` (training batches; empty in evaluation batches).
    pub targets: Vec<f32>,
}

impl HostBatch {
    /// Number of samples in the batch.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Moves the batch onto `device` as an input tensor and a label tensor.
    pub fn to_tensors(&self, device: &Device) -> (Tensor<4>, Tensor<1, Int>) {
        let n = self.len();
        let inputs = Tensor::from_data(
            TensorData::new(self.inputs.clone(), [n, INPUT.channels, INPUT.height, INPUT.width]),
            device,
        );
        let labels = Tensor::from_data(TensorData::new(self.labels.clone(), [n]), device);
        (inputs, labels)
    }

    /// The cross-entropy targets on `device`, `[n, 7]`.
    pub fn targets(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(self.targets.clone(), [self.len(), Expression::COUNT]),
            device,
        )
    }
}

/// Preprocesses one crop into `out` (one model input).
pub fn preprocess_into(pixels: &[u8], width: usize, height: usize, out: &mut [f32]) {
    // Loaders guarantee `pixels.len() == width * height` and non-empty crops.
    fer_protocol::preprocess(&INPUT, pixels, width, height, out).expect("loader produced an inconsistent crop");
}

/// Preprocesses samples without augmentation (evaluation).
pub fn eval_batch(samples: &[Sample]) -> HostBatch {
    let mut inputs = vec![0.0; samples.len() * INPUT.len()];
    for (sample, out) in samples.iter().zip(inputs.chunks_exact_mut(INPUT.len())) {
        preprocess_into(&sample.pixels, sample.width, sample.height, out);
    }
    HostBatch {
        inputs,
        labels: samples.iter().map(|s| s.label.index() as i64).collect(),
        targets: Vec::new(),
    }
}

/// [`eval_batch`] of the samples' mirror images, mirrored after preprocessing as the sensor's
/// flip averaging mirrors its inputs ([`fer_protocol::InputSpec::mirror`]).
pub fn mirrored_eval_batch(samples: &[Sample]) -> HostBatch {
    let mut batch = eval_batch(samples);
    for input in batch.inputs.chunks_exact_mut(INPUT.len()) {
        INPUT.mirror(input);
    }
    batch
}

/// The batches of one epoch, built ahead on a background thread.
pub struct EpochBatches {
    receiver: mpsc::Receiver<HostBatch>,
    worker: std::thread::JoinHandle<()>,
}

impl EpochBatches {
    /// The batches in order, as the worker finishes them.
    pub fn iter(&self) -> mpsc::Iter<'_, HostBatch> {
        self.receiver.iter()
    }

    /// Stops the worker and says whether it failed: a worker that panicked ended the epoch
    /// early, and such an epoch must not count as trained.
    pub fn finish(self) -> Result<(), String> {
        drop(self.receiver);
        self.worker.join().map_err(|panic| {
            panic
                .downcast_ref::<&str>()
                .map(std::string::ToString::to_string)
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into())
        })
    }
}

/// The batches of one training epoch: shuffled, augmented, built ahead on a background thread.
/// The last incomplete batch is dropped so batch statistics stay stable.
pub fn train_epoch(
    samples: Arc<Vec<Sample>>,
    targets: Targets,
    batch_size: usize,
    augment: Option<Augment>,
    seed: u64,
    epoch: usize,
) -> EpochBatches {
    let (sender, receiver) = mpsc::sync_channel(4);
    let worker = std::thread::spawn(move || {
        let mut order: Vec<usize> = (0..samples.len()).collect();
        order.shuffle(&mut SmallRng::seed_from_u64(
            seed ^ (epoch as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
        ));
        let mut scratch = Vec::new();
        for (b, chunk) in order.chunks_exact(batch_size).enumerate() {
            let mut inputs = vec![0.0; chunk.len() * INPUT.len()];
            for (i, (&index, out)) in chunk.iter().zip(inputs.chunks_exact_mut(INPUT.len())).enumerate() {
                let s = &samples[index];
                match augment {
                    Some(augment) => {
                        let position = (epoch * samples.len() + b * batch_size + i) as u64;
                        let mut rng =
                            SmallRng::seed_from_u64(seed.wrapping_add(position.wrapping_mul(0xD1B5_4A32_D192_ED03)));
                        augment.apply(&s.pixels, s.width, s.height, &mut rng, &mut scratch);
                        preprocess_into(&scratch, s.width, s.height, out);
                    }
                    None => preprocess_into(&s.pixels, s.width, s.height, out),
                }
            }
            let mut labels: Vec<i64> = chunk.iter().map(|&i| samples[i].label.index() as i64).collect();
            let mut targets: Vec<f32> = chunk.iter().flat_map(|&i| targets.of(&samples[i])).collect();
            if let Some(mix) = augment.and_then(|a| a.mix) {
                // A stream apart from the faces' own draws, so that mixing leaves them as they were.
                let position = (epoch * samples.len() + b * batch_size) as u64;
                let mut rng = SmallRng::seed_from_u64(
                    seed.wrapping_add(position.wrapping_mul(0xD1B5_4A32_D192_ED03)) ^ 0x5851_F42D_4C95_7F2D,
                );
                mix.apply(
                    &mut inputs,
                    &mut targets,
                    &mut labels,
                    (INPUT.width, INPUT.height),
                    &mut rng,
                );
            }
            if sender
                .send(HostBatch {
                    inputs,
                    labels,
                    targets,
                })
                .is_err()
            {
                return; // the trainer stopped early (Ctrl-C)
            }
        }
    });
    EpochBatches { receiver, worker }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::ClassCounts;
    use crate::loss::TargetConfig;

    #[test]
    fn a_mirrored_batch_is_the_batch_of_the_mirrored_faces() {
        let face = Sample {
            pixels: (0..INPUT.len()).map(|i| (i * 7 % 251) as u8).collect(),
            width: INPUT.width,
            height: INPUT.height,
            label: Expression::Anger,
            votes: None,
        };
        let mut mirror = face.clone();
        for row in mirror.pixels.chunks_exact_mut(mirror.width) {
            row.reverse();
        }
        let mirrored = mirrored_eval_batch(std::slice::from_ref(&face));
        let apart = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
        // Preprocessing resamples, so the two orders agree to rounding, not bit for bit.
        assert!(apart(&mirrored.inputs, &eval_batch(&[mirror]).inputs) < 1e-5);
        assert!(apart(&mirrored.inputs, &eval_batch(&[face]).inputs) > 0.5);
        assert_eq!(mirrored.labels, vec![Expression::Anger.index() as i64]);
    }

    #[test]
    fn a_failing_batch_worker_is_reported_not_taken_for_a_short_epoch() {
        let good = Sample {
            pixels: vec![0; INPUT.len()],
            width: INPUT.width,
            height: INPUT.height,
            label: Expression::Neutral,
            votes: None,
        };
        // A crop whose pixels do not fill its size makes preprocessing panic in the worker.
        let bad = Sample {
            pixels: vec![0; 3],
            ..good.clone()
        };
        let samples = Arc::new(vec![good.clone(), bad, good.clone(), good]);
        let config = TargetConfig {
            votes: false,
            smoothing: 0.0,
            class_weight_power: 0.0,
        };
        let targets = Targets::new(config, &ClassCounts::of([Expression::Neutral; 4]));
        let epoch = train_epoch(samples, targets, 1, None, 0, 0);
        assert!(epoch.iter().count() < 4, "the epoch ended early");
        let error = epoch.finish().unwrap_err();
        assert!(error.contains("inconsistent crop"), "{error}");
    }
}
