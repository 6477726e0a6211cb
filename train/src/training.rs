//! The training loop: trains a [`TrainConfig`] into a [`Run`] folder, resuming from its last
//! checkpoint when asked, and the evaluation it reports with.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use fer_protocol::Expression;
use indicatif::{ProgressBar, ProgressStyle};
use tracing::info;

use crate::batch::{HostBatch, eval_batch, mirrored_eval_batch, train_epoch};
use crate::config::Distill;
use crate::config::{TclConfig, TrainConfig};
use crate::dataset::{ClassCounts, DatasetSpec, LoadOptions, Sample, Split, long_tail};
use crate::distill::{TeacherMark, blend_teachers, check_teachers, teacher_distribution, teacher_marks};
use crate::ema::Ema;
use crate::loss::{Targets, cross_entropy, logit_adjustment, triplet_center_loss};
use crate::metrics::Metrics;
use crate::model::ExpressionNet;
use crate::report::EpochRecord;
use crate::run::write_json;
use crate::run::{Run, RunState, files};

/// Set by Ctrl-C; the loop stops after the current batch, keeping the last epoch's checkpoint.
static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler (once per process).
pub fn stop_on_ctrl_c() {
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130); // second Ctrl-C: give up at once
        }
        info!("Ctrl-C: stopping after this batch; the last epoch's checkpoint is kept (press again to abort)");
    });
}

/// Replaces each training face's target with its blend with the teachers' distributions on it.
/// `marks` are the teachers as [`teacher_marks`] read them: each teacher's weights are loaded as
/// the network its mark records, so the targets come from the run the student's check saw.
pub fn distil_targets(distill: &Distill, marks: &[TeacherMark], samples: &mut [Sample], device: &Device) -> Result<()> {
    let teachers = marks
        .iter()
        .map(|mark| {
            let model = Run::at(&mark.run)
                .load_reported(&mark.config, device)
                .with_context(|| format!("teacher {}", mark.run.display()))?;
            let rows = logits(&model, samples, device);
            let mirrored = distill.flip.then(|| mirrored_logits(&model, samples, device));
            Ok(teacher_distribution(&rows, mirrored.as_deref(), distill.temperature))
        })
        .collect::<Result<Vec<_>>>()?;
    blend_teachers(distill, &teachers, samples);
    Ok(())
}

/// Evaluates `model` on samples (no augmentation, inference mode).
pub fn evaluate(model: &ExpressionNet, samples: &[Sample], device: &Device) -> Metrics {
    Metrics::of_logits(&logits(model, samples, device), [0.0; Expression::COUNT], samples)
}

/// The logits of samples (no augmentation, inference mode), one row per sample.
pub fn logits(model: &ExpressionNet, samples: &[Sample], device: &Device) -> Vec<[f32; Expression::COUNT]> {
    logits_of(model, samples, device, eval_batch)
}

/// The logits of the samples' mirror images ([`mirrored_eval_batch`]), one row per sample.
pub fn mirrored_logits(model: &ExpressionNet, samples: &[Sample], device: &Device) -> Vec<[f32; Expression::COUNT]> {
    logits_of(model, samples, device, mirrored_eval_batch)
}

fn logits_of(
    model: &ExpressionNet,
    samples: &[Sample],
    device: &Device,
    batch: fn(&[Sample]) -> HostBatch,
) -> Vec<[f32; Expression::COUNT]> {
    let model = model.valid();
    let mut rows = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(256) {
        let (inputs, _) = batch(chunk).to_tensors(device);
        let values = model
            .forward(inputs)
            .logits
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .expect("float tensor");
        rows.extend(
            values
                .chunks_exact(Expression::COUNT)
                .map(|row| <[f32; Expression::COUNT]>::try_from(row).expect("7 logits")),
        );
    }
    rows
}

/// The training split's class counts of a run (what its logit adjustment is relative to).
pub fn train_class_counts(config: &TrainConfig) -> Result<ClassCounts> {
    let samples = load_split(config, &config.data, Split::Train)?;
    Ok(ClassCounts::of(samples.iter().map(|s| s.label)))
}

/// Writes a copy of a finished run whose classifier subtracts `τ·log π` from its logits
/// (post-hoc logit adjustment, Menon et al. 2021), with its report on the valid split.
pub fn adjust(run: &Run, tau: f32, out: &Run) -> Result<Metrics> {
    anyhow::ensure!(tau.is_finite(), "τ = {tau}: the adjustment must be a number");
    let same = |a: &Path, b: &Path| {
        a.canonicalize()
            .ok()
            .zip(b.canonicalize().ok())
            .is_some_and(|(a, b)| a == b)
    };
    anyhow::ensure!(
        !same(run.dir(), out.dir()),
        "{}: the adjusted copy must go to another folder, not over the run it comes from",
        out.dir().display()
    );
    let device = Device::flex();
    let (model, mut config) = run.load_model(&device)?;
    if config.posthoc_logit_adjustment.is_some() {
        bail!("{}: already adjusted; adjust the run it came from", run.dir().display());
    }
    let counts = train_class_counts(&config)?;
    let offset = logit_adjustment(-tau, &counts);
    let model = model.with_logit_offset(offset);
    config.posthoc_logit_adjustment = Some(tau);
    // The copy holds one model, the adjusted one (of the average, if the run kept one).
    config.ema = None;
    let valid_samples = load_split(&config, config.valid_spec(), Split::Valid)?;
    let valid = evaluate(&model, &valid_samples, &device);
    let state = run
        .state()?
        .with_context(|| format!("{}: no epoch finished; nothing to adjust", run.dir().display()))?;
    let mut records = run.records()?;
    records.truncate(state.epochs_done);
    out.create()?;
    out.write_config(&config)?;
    out.save_model(&model)?;
    out.write_records(&records)?;
    out.save_state(&state)?;
    out.write_report(&valid, &records)?;
    Ok(valid)
}

/// The seed of the long-tailed subset: fixed, so that runs differing only in their training seed
/// see the same faces and their spread is the training's alone.
const LONG_TAIL_SEED: u64 = 16;

/// Loads a split with the run's options, limit and imbalance.
pub fn load_split(config: &TrainConfig, spec: &DatasetSpec, split: Split) -> Result<Vec<Sample>> {
    let loaded = spec.load_verbose(
        split,
        LoadOptions {
            skip_bad: config.skip_bad,
        },
    )?;
    let mut samples = loaded.samples;
    if let Some(limit) = config.limit {
        samples.truncate(limit);
    }
    if split == Split::Train
        && let Some(ratio) = config.imbalance
    {
        if !(ratio >= 1.0 && ratio.is_finite()) {
            bail!("--imbalance {ratio}: the largest-to-smallest class ratio must be a number ≥ 1");
        }
        samples = long_tail(samples, ratio, LONG_TAIL_SEED);
        let counts = ClassCounts::of(samples.iter().map(|s| s.label));
        info!(
            "long-tailed to a class ratio of {ratio}: {} images\n{counts}",
            counts.total()
        );
    }
    Ok(samples)
}

/// Learning rate at `step` of `total`: linear warm-up over `warmup` steps, then cosine to 0.
fn learning_rate(peak: f64, step: usize, warmup: usize, total: usize) -> f64 {
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total - warmup).max(1) as f64;
    peak * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos())
}

/// What a finished (or interrupted) run returns.
pub struct RunSummary {
    /// Metrics of the final model on the valid split.
    pub valid: Metrics,
    /// Epochs completed.
    pub epochs_done: usize,
    /// Whether Ctrl-C stopped it early.
    pub interrupted: bool,
    /// Mean training throughput over the run, images per second.
    pub images_per_second: f64,
}

/// Trains (or, when `run` holds a checkpoint and `resume` is set, continues) a run in `run`.
///
/// A run is deterministic for its seed as long as nothing else in the process draws from the
/// device's random generator meanwhile: Burn's generator is global to the process.
pub fn train(config: &TrainConfig, run: &Run, resume: bool) -> Result<RunSummary> {
    if config.posthoc_logit_adjustment.is_some() {
        bail!(
            "{}: a logit-adjusted copy of a finished run cannot be trained further",
            run.dir().display()
        );
    }
    config.validate()?;
    if !resume && run.exists() {
        bail!(
            "{} already holds a run: continue it with `fer-train train --resume {}`, or train into a new folder",
            run.dir().display(),
            run.dir().display()
        );
    }
    // state.json is written last in a checkpoint: without it no epoch finished, and a run killed
    // that early has nothing to continue from but its config, so it starts over.
    let committed = if resume { run.state()? } else { None };
    let from_checkpoint = committed.is_some();
    let teachers = config.distill.as_ref().map(teacher_marks).transpose()?;
    if let Some(marks) = &teachers
        && from_checkpoint
    {
        check_teachers(run, marks)?;
    }
    let device = config.backend.device()?.autodiff();
    device.seed(config.seed);

    let mut train_samples = load_split(config, &config.data, Split::Train)?;
    if let (Some(distill), Some(marks)) = (&config.distill, &teachers) {
        distil_targets(distill, marks, &mut train_samples, &config.backend.device()?)?;
    }
    let train_samples = Arc::new(train_samples);
    let valid_samples = load_split(config, config.valid_spec(), Split::Valid)?;
    if train_samples.len() < config.batch_size {
        bail!(
            "{} training images, fewer than one batch of {}",
            train_samples.len(),
            config.batch_size
        );
    }

    // Only now, so a bad data set spec leaves no empty run folder behind.
    run.create()?;
    if resume && run.config()? != *config {
        bail!(
            "{}: config.json differs from this run's settings; resume with the saved config",
            run.dir().display()
        );
    }
    if let Some(marks) = &teachers {
        write_json(&run.file(files::TEACHERS), marks)?;
    }
    if resume {
        run.settle(committed.as_ref().map_or(0, |s| s.epochs_done))?;
    }
    if resume && !from_checkpoint && run.file(files::MODEL).exists() {
        // Weights without the state that says which epoch they hold: starting over would
        // overwrite them.
        bail!(
            "{}: {} is there but {} is not, so which epoch the weights hold is unknown; restore {} \
             (its epochs_done is the last epoch of {}) or train into a new run folder",
            run.dir().display(),
            files::MODEL,
            files::STATE,
            files::STATE,
            files::METRICS
        );
    }
    if resume && !from_checkpoint {
        info!(
            "{}: stopped before its first epoch ended; starting it again",
            run.dir().display()
        );
    }
    let (mut model, mut optimizer, mut state) = if let Some(state) = committed {
        let model = run.load_weights(files::MODEL, config, &device)?;
        let optimizer = run.load_optimizer(config)?;
        info!("resuming {} after epoch {}", run.dir().display(), state.epochs_done);
        (model, optimizer, state)
    } else {
        run.write_config(config)?;
        run.remove_records()?;
        let model = match &config.init {
            None => ExpressionNet::new(&config.network, &device),
            Some(init) => {
                let (model, init_config) = Run::at(init).load_model(&device)?;
                if init_config.network != config.network {
                    bail!(
                        "{}: its network ({:?}) differs from this run's ({:?})",
                        init.display(),
                        init_config.network,
                        config.network
                    );
                }
                info!("starting from the weights of {}", init.display());
                model
            }
        };
        let optimizer = AdamWConfig::new().with_weight_decay(config.weight_decay).init();
        (model, optimizer, RunState::default())
    };
    info!(
        "network: {} parameters, {:.1} M multiply-adds per face, attention {}",
        model.num_params(),
        config.network.multiply_adds() as f64 / 1e6,
        if config.network.attention { "on" } else { "off" }
    );

    let counts = ClassCounts::of(train_samples.iter().map(|s| s.label));
    let targets = Targets::new(config.targets(), &counts);
    let adjustment = Tensor::<2>::from_data(
        TensorData::new(
            logit_adjustment(config.logit_adjustment, &counts).to_vec(),
            [1, counts.0.len()],
        ),
        &device,
    );
    let steps_per_epoch = train_samples.len() / config.batch_size;
    let total_steps = steps_per_epoch * config.epochs;
    let mut ema = match config.ema {
        None => None,
        Some(decay) => {
            let steps = (state.epochs_done * steps_per_epoch) as u64;
            let ema = Ema::start(&model, &config.network, decay, steps);
            Some(if from_checkpoint {
                ema.with_weights(run.load_weights(files::EMA, config, &config.backend.device()?)?)
            } else {
                ema
            })
        }
    };
    let mut records = if from_checkpoint { run.records()? } else { Vec::new() };
    records.truncate(state.epochs_done);
    let mut train_seconds = 0.0;
    let mut train_images = 0usize;
    let mut interrupted = false;

    for epoch in state.epochs_done..config.epochs {
        // Dropout draws from the device's generator: seeding it per epoch makes a resumed run
        // draw what an uninterrupted one would have.
        device.seed(config.seed ^ (epoch as u64 + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        let started = Instant::now();
        let progress = ProgressBar::new((steps_per_epoch * config.batch_size) as u64).with_style(
            ProgressStyle::with_template("epoch {prefix} [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        progress.set_prefix(format!("{}/{}", epoch + 1, config.epochs));
        let (mut sum_loss, mut sum_ce, mut sum_tcl, mut correct, mut seen) = (0.0, 0.0, 0.0, 0usize, 0usize);
        let mut lr = config.lr;
        let batches = train_epoch(
            train_samples.clone(),
            targets.clone(),
            config.batch_size,
            config.augment,
            config.seed,
            epoch,
        );
        for (step, batch) in batches.iter().enumerate() {
            lr = learning_rate(config.lr, epoch * steps_per_epoch + step, steps_per_epoch, total_steps);
            let (loss, ce, tcl, hits) = train_step(
                &mut model,
                &mut optimizer,
                &batch,
                config.tcl.as_ref(),
                &adjustment,
                lr,
                &device,
            );
            if !loss.is_finite() {
                bail!(
                    "epoch {}, step {}: the loss is {loss}; training diverged (a lower --lr may help); \
                    the last checkpoint is intact",
                    epoch + 1,
                    step + 1
                );
            }
            if let Some(ema) = &mut ema {
                ema.update(&model);
            }
            sum_loss += loss;
            sum_ce += ce;
            sum_tcl += tcl;
            correct += hits;
            seen += batch.len();
            progress.inc(batch.len() as u64);
            progress.set_message(format!("loss {:.3}", sum_loss / (step + 1) as f64));
            if STOP.load(Ordering::SeqCst) {
                interrupted = true;
                break;
            }
        }
        progress.finish_and_clear();
        if let Err(panic) = batches.finish() {
            bail!(
                "epoch {}: the batch-building thread failed ({panic}); the last checkpoint is intact",
                epoch + 1
            );
        }
        let train_time = started.elapsed().as_secs_f64();
        train_seconds += train_time;
        train_images += seen;
        if interrupted {
            // No mid-epoch checkpoint: resuming repeats this epoch from the last one, which gives
            // the same run as no interruption at all.
            info!(
                "interrupted in epoch {}: {} keeps the checkpoint after epoch {}; continue with \
                `fer-train train --resume {}`",
                epoch + 1,
                run.dir().display(),
                state.epochs_done,
                run.dir().display()
            );
            break;
        }
        let reported = ema.as_ref().map_or(&model, Ema::model);
        let valid = evaluate(reported, &valid_samples, &device);
        let steps = (seen / config.batch_size).max(1) as f64;
        let record = EpochRecord {
            epoch: epoch + 1,
            lr,
            train_loss: sum_loss / steps,
            train_ce: sum_ce / steps,
            train_tcl: sum_tcl / steps,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            images_per_second: seen as f64 / train_time,
            seconds: started.elapsed().as_secs_f64(),
            valid,
        };
        info!(
            "epoch {}/{}: loss {:.4} (ce {:.4}, tcl {:.4}), train acc {:.1} %, valid acc {:.2} %, mean \
            class acc {:.2} %, {:.0} img/s, {:.0} s",
            record.epoch,
            config.epochs,
            record.train_loss,
            record.train_ce,
            record.train_tcl,
            100.0 * record.train_accuracy,
            100.0 * record.valid.accuracy,
            100.0 * record.valid.mean_class_accuracy,
            record.images_per_second,
            record.seconds
        );
        records.push(record);
        state = RunState { epochs_done: epoch + 1 };
        // The metrics are rewritten whole before state.json moves on: a kill at any point leaves
        // a state and metrics that agree, or extra metrics lines that resume drops.
        run.write_records(&records)?;
        run.save_checkpoint(&model, &optimizer, ema.as_ref(), &state)?;
    }

    let valid = match records.last() {
        Some(last) => last.valid.clone(),
        None => evaluate(ema.as_ref().map_or(&model, Ema::model), &valid_samples, &device),
    };
    if !interrupted {
        run.write_report(&valid, &records)?;
    }
    Ok(RunSummary {
        valid,
        epochs_done: state.epochs_done,
        interrupted,
        images_per_second: train_images as f64 / train_seconds.max(1e-9),
    })
}

/// A batch's training loss on `model`, before the backward pass.
pub struct BatchLoss {
    /// What the backward pass starts from: CE + λ·TCL.
    pub total: Tensor<1>,
    /// The cross-entropy term.
    pub ce: Tensor<1>,
    /// The triplet-center loss term, unweighted (none for the cross-entropy baseline).
    pub tcl: Option<Tensor<1>>,
    /// Correct predictions in the batch.
    pub hits: Tensor<1, Int>,
}

/// [`BatchLoss`] of `batch` on `model`. Tensors, not numbers: reading a value back waits for the
/// device, which the training step leaves until after its update. `adjustment` is the `[1, 7]`
/// logit adjustment of the cross-entropy.
pub fn batch_loss(
    model: &ExpressionNet,
    batch: &HostBatch,
    tcl: Option<&TclConfig>,
    adjustment: &Tensor<2>,
    device: &Device,
) -> BatchLoss {
    let (inputs, labels) = batch.to_tensors(device);
    let output = model.forward(inputs);
    let hits = output
        .logits
        .clone()
        .detach()
        .argmax(1)
        .reshape([batch.len()])
        .equal(labels.clone())
        .int()
        .sum();
    let ce = cross_entropy(output.logits.clone(), adjustment.clone(), batch.targets(device));
    let tcl_loss = tcl.map(|tcl| {
        triplet_center_loss(
            output.embedding,
            labels,
            model.centers.val(),
            output.logits,
            tcl.negatives,
            tcl.margin,
        )
        .loss
    });
    let total = match (tcl, &tcl_loss) {
        (Some(tcl), Some(loss)) => ce.clone() + loss.clone() * tcl.lambda,
        _ => ce.clone(),
    };
    BatchLoss {
        total,
        ce,
        tcl: tcl_loss,
        hits,
    }
}

/// One optimisation step on [`batch_loss`]; returns (total loss, CE, TCL, correct predictions).
pub(crate) fn train_step(
    model: &mut ExpressionNet,
    optimizer: &mut burn::optim::ModuleOptimizer,
    batch: &HostBatch,
    tcl: Option<&TclConfig>,
    adjustment: &Tensor<2>,
    lr: f64,
    device: &Device,
) -> (f64, f64, f64, usize) {
    let loss = batch_loss(model, batch, tcl, adjustment, device);
    let grads = GradientsParams::from_grads(loss.total.backward(), &*model);
    *model = optimizer.step(lr, model.clone(), grads);
    (
        scalar(loss.total),
        scalar(loss.ce),
        loss.tcl.map_or(0.0, scalar),
        loss.hits.into_scalar::<i64>() as usize,
    )
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert!((learning_rate(1.0, 0, 10, 100) - 0.1).abs() < 1e-12);
        assert!((learning_rate(1.0, 9, 10, 100) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1.0, 10, 10, 100) - 1.0).abs() < 1e-12);
        assert!(learning_rate(1.0, 55, 10, 100) < 0.6);
        assert!(learning_rate(1.0, 100, 10, 100).abs() < 1e-12);
    }
}
