//! The training loop and the run folder it writes.
//!
//! A run folder holds everything needed to use or continue a run:
//! `config.json` (what made it), `model.burnpack` (weights), `optimizer.burnpack` and
//! `state.json` (to resume), `metrics.jsonl` (one line per epoch), and the final report
//! (`report.txt`, `report.json`, `curves.png`, `confusion.png`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use fer_protocol::Expression;
use indicatif::{ProgressBar, ProgressStyle};

use crate::augment::Augment;
use crate::batch::{HostBatch, eval_batch, train_epoch};
use crate::dataset::{ClassCounts, DatasetSpec, LoadOptions, Sample, Split, long_tail};
use crate::ema::Ema;
use crate::loss::{Negatives, TargetConfig, Targets, cross_entropy, logit_adjustment, triplet_center_loss};
use crate::metrics::Metrics;
use crate::model::{ExpressionNet, NetworkConfig};
use crate::report::{EpochRecord, plot_confusion, plot_curves};

/// The CPU backend to compute on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Burn's pure-Rust `flex` backend (the default: the faster one here, see docs/results.md).
    Flex,
    /// The deprecated `ndarray` backend (built with the `ndarray` feature only).
    #[cfg(feature = "ndarray")]
    Ndarray,
}

impl Backend {
    /// The inference device of this backend.
    pub fn device(self) -> Device {
        match self {
            Backend::Flex => Device::flex(),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)] // kept for comparison, as the design asks
            Backend::Ndarray => Device::ndarray(),
        }
    }
}

/// The triplet-center loss settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TclConfig {
    /// How the negative is chosen.
    pub negatives: Negatives,
    /// Weight λ of the TCL term in `CE + λ·TCL`.
    pub lambda: f32,
    /// Margin m.
    pub margin: f32,
}

impl Default for TclConfig {
    /// Semi-synthesized negatives with α = 0.5, λ = 0.01, m = 1.
    fn default() -> Self {
        Self {
            negatives: Negatives::SemiSynthesized { alpha: 0.5 },
            lambda: 0.01,
            margin: 1.0,
        }
    }
}

/// Everything that defines a training run; saved as `config.json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    /// Training data (its train split).
    pub data: DatasetSpec,
    /// Evaluation data (its valid split); defaults to `data`.
    pub valid: Option<DatasetSpec>,
    /// The network.
    pub network: NetworkConfig,
    /// `None`: the cross-entropy baseline.
    pub tcl: Option<TclConfig>,
    /// Label smoothing of the cross-entropy (0: none).
    pub label_smoothing: f32,
    /// Cross-entropy against the annotators' vote distribution where the data set has one (FER+).
    #[serde(default)]
    pub vote_labels: bool,
    /// Class weight exponent p of the cross-entropy (weight ∝ n_k^(−p); 0: unweighted).
    #[serde(default)]
    pub class_weight_power: f32,
    /// Logit adjustment τ: the cross-entropy sees `logits + τ·log π` (0: off).
    #[serde(default)]
    pub logit_adjustment: f32,
    /// Number of epochs.
    pub epochs: usize,
    /// Images per batch.
    pub batch_size: usize,
    /// Peak learning rate (AdamW, linear warm-up over the first epoch, cosine decay to 0).
    pub lr: f64,
    /// AdamW weight decay.
    pub weight_decay: f32,
    /// Seed of initialisation, shuffling and augmentation.
    pub seed: u64,
    /// CPU backend.
    pub backend: Backend,
    /// Augmentation (`None`: off).
    pub augment: Option<Augment>,
    /// Use only the first N training and valid images (smoke runs, tests).
    pub limit: Option<usize>,
    /// Make the training split long-tailed with this largest-to-smallest class ratio
    /// ([`crate::dataset::long_tail`]; the same faces for every run); valid stays whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imbalance: Option<f32>,
    /// Skip and count bad rows and images instead of stopping.
    pub skip_bad: bool,
    /// Start from this run folder's weights instead of a random network (fine-tuning); the
    /// optimizer and the learning-rate schedule start afresh.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init: Option<PathBuf>,
    /// τ of the post-hoc logit adjustment `fer-train adjust` applied to the trained classifier
    /// (its bias lost `τ·log π`); such a run is finished and cannot be resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub posthoc_logit_adjustment: Option<f32>,
    /// Decay of an exponential moving average of the weights ([`crate::ema`]), updated every
    /// step; the run reports and ships the average (`None`: no average).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ema: Option<f64>,
}

impl TrainConfig {
    /// Checks the values a run could otherwise train on to a NaN, a panic or a silent no-op;
    /// the error names the setting as the command line spells it.
    pub fn validate(&self) -> Result<()> {
        let finite = |flag: &str, v: f64, ok: bool, range: &str| {
            anyhow::ensure!(v.is_finite() && ok, "{flag} {v} is out of range: {range}");
            Ok(())
        };
        finite("--lr", self.lr, self.lr >= 0.0, "0 or more")?;
        let wd = f64::from(self.weight_decay);
        finite("--weight-decay", wd, wd >= 0.0, "0 or more")?;
        let dropout = self.network.dropout;
        finite("--dropout", dropout, (0.0..1.0).contains(&dropout), "0 to under 1")?;
        let smoothing = f64::from(self.label_smoothing);
        finite(
            "--label-smoothing",
            smoothing,
            (0.0..1.0).contains(&smoothing),
            "0 to under 1",
        )?;
        let power = f64::from(self.class_weight_power);
        finite("--class-weight-power", power, power >= 0.0, "0 or more")?;
        finite("--logit-adjust", f64::from(self.logit_adjustment), true, "a number")?;
        if let Some(tcl) = &self.tcl {
            let lambda = f64::from(tcl.lambda);
            finite("--lambda", lambda, lambda >= 0.0, "0 or more")?;
            let margin = f64::from(tcl.margin);
            finite("--margin", margin, margin >= 0.0, "0 or more")?;
            if let Negatives::SemiSynthesized { alpha } = tcl.negatives {
                let alpha = f64::from(alpha);
                finite("--alpha", alpha, (0.0..=1.0).contains(&alpha), "0 to 1")?;
            }
        }
        anyhow::ensure!(self.epochs >= 1, "--epochs must be at least 1");
        anyhow::ensure!(self.batch_size >= 1, "--batch-size must be at least 1");
        if let Some(decay) = self.ema {
            finite("--ema", decay, decay > 0.0 && decay < 1.0, "between 0 and 1")?;
        }
        Ok(())
    }

    /// The default run on `data`.
    pub fn new(data: DatasetSpec) -> Self {
        Self {
            data,
            valid: None,
            network: NetworkConfig::default(),
            tcl: Some(TclConfig::default()),
            // Votes already carry the annotators' doubt; smoothing stays an option for hard labels.
            label_smoothing: 0.0,
            vote_labels: true,
            class_weight_power: 0.0,
            logit_adjustment: 0.0,
            // Valid accuracy rose until about epoch 39 and stayed within 85.7-86.3 % after it
            // (docs/results.md); 48 undisturbed epochs of about 160 s are about 130 minutes on
            // 2 cores, inside model v2's 150-minute budget.
            epochs: 48,
            batch_size: 64,
            lr: 2e-3,
            weight_decay: 1e-4,
            seed: 42,
            backend: Backend::Flex,
            augment: Some(Augment::default()),
            limit: None,
            imbalance: None,
            skip_bad: false,
            init: None,
            posthoc_logit_adjustment: None,
            ema: None,
        }
    }

    /// A run that finishes in seconds: tiny network, 64 images, 2 epochs.
    pub fn smoke(data: DatasetSpec) -> Self {
        Self {
            network: NetworkConfig::tiny(),
            epochs: 2,
            batch_size: 16,
            limit: Some(64),
            imbalance: None,
            ..Self::new(data)
        }
    }

    /// The data set the run is validated on: `valid` when set, else its training data's.
    pub fn valid_spec(&self) -> &DatasetSpec {
        self.valid.as_ref().unwrap_or(&self.data)
    }

    /// How the cross-entropy targets are made.
    pub fn targets(&self) -> TargetConfig {
        TargetConfig {
            votes: self.vote_labels,
            smoothing: self.label_smoothing,
            class_weight_power: self.class_weight_power,
        }
    }
}

/// Progress of a run, saved as `state.json` with every checkpoint, always at an epoch's end.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct RunState {
    /// Epochs fully trained.
    pub epochs_done: usize,
}

/// File names inside a run folder.
pub mod files {
    /// The training configuration.
    pub const CONFIG: &str = "config.json";
    /// Model weights.
    pub const MODEL: &str = "model.burnpack";
    /// Optimizer state.
    pub const OPTIMIZER: &str = "optimizer.burnpack";
    /// The moving average of the weights, in a run that keeps one: the model it reports.
    pub const EMA: &str = "model_ema.burnpack";
    /// Run progress.
    pub const STATE: &str = "state.json";
    /// Per-epoch metrics.
    pub const METRICS: &str = "metrics.jsonl";
    /// The final evaluation on the valid split.
    pub const REPORT: &str = "report.json";
}

/// Set by Ctrl-C; the loop stops after the current batch, keeping the last epoch's checkpoint.
static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the Ctrl-C handler (once per process).
pub fn stop_on_ctrl_c() {
    let _ = ctrlc::set_handler(|| {
        if STOP.swap(true, Ordering::SeqCst) {
            std::process::exit(130); // second Ctrl-C: give up at once
        }
        eprintln!("\nCtrl-C: stopping after this batch; the last epoch's checkpoint is kept (press again to abort)");
    });
}

/// Writes `path` through a temporary file, an fsync and a rename: a crash or power cut at any
/// point leaves either the old file or the new one, never half of one. The temporary name is
/// unique to the process and the call, so two writers never share one.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let written = write(&tmp).and_then(|()| {
        std::fs::File::open(&tmp)
            .and_then(|file| file.sync_all())
            .with_context(|| format!("syncing {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    // The rename itself is durable only once the folder is.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("syncing {}", dir.display()))?;
    }
    Ok(())
}

/// Writes a JSON file of a run folder atomically (config, state, report, predictions).
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    write_atomically(path, |tmp| {
        std::fs::write(tmp, text).with_context(|| format!("writing {}", tmp.display()))
    })
}

/// Reads and parses a JSON file of a run folder (config, state, report).
pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Reads the `config.json` of a run folder.
pub fn load_config(run: &Path) -> Result<TrainConfig> {
    read_json(&run.join(files::CONFIG))
        .with_context(|| format!("{}: not a run folder (no readable config.json)", run.display()))
}

/// Loads a trained network from a run folder onto `device`, with its config.
pub fn load_checkpoint(run: &Path, device: &Device) -> Result<(ExpressionNet, TrainConfig)> {
    let config = load_config(run)?;
    // A run that averages its weights reports, and so exports, the average.
    let file = if config.ema.is_some() { files::EMA } else { files::MODEL };
    Ok((load_weights(run, file, &config, device)?, config))
}

/// One weights file of a run folder, as a model of the run's network.
fn load_weights(run: &Path, file: &str, config: &TrainConfig, device: &Device) -> Result<ExpressionNet> {
    let weights = run.join(file);
    if !weights.is_file() {
        bail!("{}: no checkpoint ({file}) in this run folder", run.display());
    }
    ExpressionNet::new(&config.network, device)
        .try_load_file(&weights)
        .map_err(|e| anyhow::anyhow!("{}: {e:?} (does config.json match the weights?)", weights.display()))
}

/// Evaluates `model` on samples (no augmentation, inference mode).
pub fn evaluate(model: &ExpressionNet, samples: &[Sample], device: &Device) -> Metrics {
    Metrics::of_logits(&logits(model, samples, device), [0.0; Expression::COUNT], samples)
}

/// The logits of samples (no augmentation, inference mode), one row per sample.
pub fn logits(model: &ExpressionNet, samples: &[Sample], device: &Device) -> Vec<[f32; Expression::COUNT]> {
    let model = model.valid();
    let mut rows = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(256) {
        let (inputs, _) = eval_batch(chunk).to_tensors(device);
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
pub fn adjust(run: &Path, tau: f32, out: &Path) -> Result<Metrics> {
    anyhow::ensure!(tau.is_finite(), "τ = {tau}: the adjustment must be a number");
    let same = |a: &Path, b: &Path| {
        a.canonicalize()
            .ok()
            .zip(b.canonicalize().ok())
            .is_some_and(|(a, b)| a == b)
    };
    anyhow::ensure!(
        !same(run, out),
        "{}: the adjusted copy must go to another folder, not over the run it comes from",
        out.display()
    );
    let device = Backend::Flex.device();
    let (model, mut config) = load_checkpoint(run, &device)?;
    if config.posthoc_logit_adjustment.is_some() {
        bail!("{}: already adjusted; adjust the run it came from", run.display());
    }
    let counts = train_class_counts(&config)?;
    let offset = logit_adjustment(-tau, &counts);
    let model = model.with_logit_offset(offset);
    config.posthoc_logit_adjustment = Some(tau);
    // The copy holds one model, the adjusted one (of the average, if the run kept one).
    config.ema = None;
    let valid_samples = load_split(&config, config.valid_spec(), Split::Valid)?;
    let valid = evaluate(&model, &valid_samples, &device);
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    write_json(&out.join(files::CONFIG), &config)?;
    save_model(&out.join(files::MODEL), &model)?;
    let state: RunState = read_json(&run.join(files::STATE))?;
    let mut records = read_records(&run.join(files::METRICS))?;
    records.truncate(state.epochs_done);
    write_records(&out.join(files::METRICS), &records)?;
    write_json(&out.join(files::STATE), &state)?;
    write_report(out, &valid, &records)?;
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
        eprintln!(
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
pub fn train(config: &TrainConfig, run: &Path, resume: bool) -> Result<RunSummary> {
    if config.posthoc_logit_adjustment.is_some() {
        bail!(
            "{}: a logit-adjusted copy of a finished run cannot be trained further",
            run.display()
        );
    }
    config.validate()?;
    if !resume && run.join(files::CONFIG).exists() {
        bail!(
            "{} already holds a run: continue it with `fer-train train --resume {}`, or train into a new folder",
            run.display(),
            run.display()
        );
    }
    let device = config.backend.device().autodiff();
    device.seed(config.seed);

    let train_samples = Arc::new(load_split(config, &config.data, Split::Train)?);
    let valid_samples = load_split(config, config.valid_spec(), Split::Valid)?;
    if train_samples.len() < config.batch_size {
        bail!(
            "{} training images, fewer than one batch of {}",
            train_samples.len(),
            config.batch_size
        );
    }

    // Only now, so a bad data set spec leaves no empty run folder behind.
    std::fs::create_dir_all(run).with_context(|| format!("creating run folder {}", run.display()))?;
    if resume && load_config(run)? != *config {
        bail!(
            "{}: config.json differs from this run's settings; resume with the saved config",
            run.display()
        );
    }
    // state.json is written last in a checkpoint: without it no epoch finished, and a run killed
    // that early has nothing to continue from but its config, so it starts over.
    let from_checkpoint = resume && run.join(files::STATE).is_file();
    if resume {
        let done = if from_checkpoint {
            read_json::<RunState>(&run.join(files::STATE))?.epochs_done
        } else {
            0
        };
        settle(run, done)?;
    }
    if resume && !from_checkpoint && run.join(files::MODEL).exists() {
        // Weights without the state that says which epoch they hold: starting over would
        // overwrite them.
        bail!(
            "{}: {} is there but {} is not, so which epoch the weights hold is unknown; restore {} \
             (its epochs_done is the last epoch of {}) or train into a new run folder",
            run.display(),
            files::MODEL,
            files::STATE,
            files::STATE,
            files::METRICS
        );
    }
    if resume && !from_checkpoint {
        eprintln!(
            "{}: stopped before its first epoch ended; starting it again",
            run.display()
        );
    }
    let (mut model, mut optimizer, mut state) = if from_checkpoint {
        let model = load_weights(run, files::MODEL, config, &device)?;
        let optimizer = AdamWConfig::new()
            .with_weight_decay(config.weight_decay)
            .init()
            .load(run.join(files::OPTIMIZER))
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", run.join(files::OPTIMIZER).display()))?;
        let state: RunState = read_json(&run.join(files::STATE))?;
        eprintln!("resuming {} after epoch {}", run.display(), state.epochs_done);
        (model, optimizer, state)
    } else {
        write_json(&run.join(files::CONFIG), config)?;
        let _ = std::fs::remove_file(run.join(files::METRICS));
        let model = match &config.init {
            None => ExpressionNet::new(&config.network, &device),
            Some(init) => {
                let (model, init_config) = load_checkpoint(init, &device)?;
                if init_config.network != config.network {
                    bail!(
                        "{}: its network ({:?}) differs from this run's ({:?})",
                        init.display(),
                        init_config.network,
                        config.network
                    );
                }
                eprintln!("starting from the weights of {}", init.display());
                model
            }
        };
        let optimizer = AdamWConfig::new().with_weight_decay(config.weight_decay).init();
        (model, optimizer, RunState::default())
    };
    eprintln!(
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
                ema.with_weights(load_weights(run, files::EMA, config, &Device::flex())?)
            } else {
                ema
            })
        }
    };
    let mut records = if from_checkpoint {
        read_records(&run.join(files::METRICS))?
    } else {
        Vec::new()
    };
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
            eprintln!(
                "interrupted in epoch {}: {} keeps the checkpoint after epoch {}; continue with \
                `fer-train train --resume {}`",
                epoch + 1,
                run.display(),
                state.epochs_done,
                run.display()
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
        eprintln!(
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
        write_records(&run.join(files::METRICS), &records)?;
        save_checkpoint(run, &model, &optimizer, ema.as_ref(), &state)?;
    }

    let valid = match records.last() {
        Some(last) => last.valid.clone(),
        None => evaluate(ema.as_ref().map_or(&model, Ema::model), &valid_samples, &device),
    };
    if !interrupted {
        write_report(run, &valid, &records)?;
    }
    Ok(RunSummary {
        valid,
        epochs_done: state.epochs_done,
        interrupted,
        images_per_second: train_images as f64 / train_seconds.max(1e-9),
    })
}

/// One optimisation step; returns (total loss, CE, TCL, correct predictions). `adjustment` is
/// the `[1, 7]` logit adjustment of the cross-entropy.
pub(crate) fn train_step(
    model: &mut ExpressionNet,
    optimizer: &mut burn::optim::ModuleOptimizer,
    batch: &HostBatch,
    tcl: Option<&TclConfig>,
    adjustment: &Tensor<2>,
    lr: f64,
    device: &Device,
) -> (f64, f64, f64, usize) {
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
    let (loss, tcl_value) = match tcl {
        Some(tcl) => {
            let tcl_loss = triplet_center_loss(
                output.embedding,
                labels,
                model.centers.val(),
                output.logits,
                tcl.negatives,
                tcl.margin,
            )
            .loss;
            (ce.clone() + tcl_loss.clone() * tcl.lambda, scalar(tcl_loss))
        }
        None => (ce.clone(), 0.0),
    };
    let grads = GradientsParams::from_grads(loss.backward(), &*model);
    *model = optimizer.step(lr, model.clone(), grads);
    (scalar(loss), scalar(ce), tcl_value, hits.into_scalar::<i64>() as usize)
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

fn save_model(path: &Path, model: &ExpressionNet) -> Result<()> {
    write_atomically(path, |p| {
        model
            .clone()
            .save_file(p)
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", p.display()))
    })
}

/// Writes a checkpoint: the weights, the optimizer, the average if the run keeps one, then the
/// state that names the epoch. A kill can land between any two writes, so the new files go under
/// `NAME.epoch-N` first, state.json moving on to epoch N commits them, and only then do they take
/// their names ([`settle`]); until then the run folder holds the previous checkpoint whole.
fn save_checkpoint(
    run: &Path,
    model: &ExpressionNet,
    optimizer: &burn::optim::ModuleOptimizer,
    ema: Option<&Ema>,
    state: &RunState,
) -> Result<()> {
    let pending = |file: &str| run.join(pending_name(file, state.epochs_done));
    save_model(&pending(files::MODEL), model)?;
    write_atomically(&pending(files::OPTIMIZER), |p| {
        optimizer
            .to_record()
            .save(p)
            .map_err(|e| anyhow::anyhow!("{}: {e:?}", p.display()))
    })?;
    if let Some(ema) = ema {
        save_model(&pending(files::EMA), ema.model())?;
    }
    write_json(&run.join(files::STATE), state)?;
    settle(run, state.epochs_done)
}

/// The name a checkpoint file has until the state of epoch `epoch` commits it.
fn pending_name(file: &str, epoch: usize) -> String {
    format!("{file}.epoch-{epoch}")
}

/// Finishes or discards what a kill left of a checkpoint: files of the committed epoch
/// `epochs_done` take their names, those of any other epoch (never committed, or stale) go.
fn settle(run: &Path, epochs_done: usize) -> Result<()> {
    for file in [files::MODEL, files::OPTIMIZER, files::EMA] {
        let committed = run.join(pending_name(file, epochs_done));
        if committed.is_file() {
            std::fs::rename(&committed, run.join(file))
                .with_context(|| format!("moving {} into place", committed.display()))?;
        }
        let prefix = pending_name(file, 0);
        let prefix = &prefix[..prefix.len() - 1];
        for entry in std::fs::read_dir(run).with_context(|| format!("listing {}", run.display()))? {
            let path = entry?.path();
            if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
            {
                std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            }
        }
    }
    Ok(())
}

/// A run's `metrics.jsonl`, one record per finished epoch. The file is only ever rewritten whole
/// and atomically, so a line that does not parse is damage: an error naming the file and line.
pub fn read_records(path: &Path) -> Result<Vec<EpochRecord>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .map(|(i, line)| serde_json::from_str(line).with_context(|| format!("{}:{}", path.display(), i + 1)))
        .collect()
}

fn write_records(path: &Path, records: &[EpochRecord]) -> Result<()> {
    let mut text = String::new();
    for record in records {
        text.push_str(&serde_json::to_string(record)?);
        text.push('\n');
    }
    write_atomically(path, |tmp| {
        std::fs::write(tmp, text).with_context(|| format!("writing {}", tmp.display()))
    })
}

/// Writes `report.txt`, `report.json` and the plots of a run.
pub fn write_report(run: &Path, valid: &Metrics, records: &[EpochRecord]) -> Result<()> {
    std::fs::write(run.join("report.txt"), format!("{valid}\n"))
        .with_context(|| format!("writing report in {}", run.display()))?;
    write_json(&run.join(files::REPORT), valid)?;
    for result in [
        plot_curves(records, &run.join("curves.png")),
        plot_confusion(valid, &run.join("confusion.png")),
    ] {
        if let Err(error) = result {
            eprintln!("warning: {error:#}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_damaged_metrics_line_is_an_error_naming_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(files::METRICS);
        std::fs::write(&path, "{\"epoch\": 1}\n").unwrap();
        let error = format!("{:#}", super::read_records(&path).unwrap_err());
        assert!(error.contains("metrics.jsonl:1"), "{error}");
        assert!(super::read_records(&dir.path().join("none")).is_err());
    }

    #[test]
    fn a_checkpoint_cut_short_is_rolled_forward_once_committed_and_discarded_if_not() {
        let dir = tempfile::tempdir().unwrap();
        let run = dir.path();
        let read = |f: &str| std::fs::read_to_string(run.join(f)).ok();
        std::fs::write(run.join(files::MODEL), "epoch 2").unwrap();
        std::fs::write(run.join(super::pending_name(files::MODEL, 3)), "epoch 3").unwrap();
        std::fs::write(run.join(super::pending_name(files::OPTIMIZER, 3)), "epoch 3").unwrap();
        std::fs::write(run.join(super::pending_name(files::MODEL, 1)), "stale").unwrap();
        // Killed before state.json said epoch 3: the files of epoch 2 stand, the rest go.
        super::settle(run, 2).unwrap();
        assert_eq!(read(files::MODEL).as_deref(), Some("epoch 2"));
        assert_eq!(std::fs::read_dir(run).unwrap().count(), 1);
        // Killed after state.json said epoch 3, before the renames: they are finished.
        std::fs::write(run.join(super::pending_name(files::MODEL, 3)), "epoch 3").unwrap();
        std::fs::write(run.join(super::pending_name(files::OPTIMIZER, 3)), "epoch 3").unwrap();
        super::settle(run, 3).unwrap();
        assert_eq!(read(files::MODEL).as_deref(), Some("epoch 3"));
        assert_eq!(read(files::OPTIMIZER).as_deref(), Some("epoch 3"));
        assert_eq!(std::fs::read_dir(run).unwrap().count(), 2);
    }

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
