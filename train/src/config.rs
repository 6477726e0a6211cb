//! What defines a training run: the backend, the loss settings and [`TrainConfig`], saved as a
//! run folder's `config.json` and checked by [`TrainConfig::validate`] before any work.

use std::path::PathBuf;

use anyhow::{Result, bail};
use burn::prelude::*;

use crate::augment::Augment;
use crate::dataset::DatasetSpec;
use crate::loss::{Negatives, TargetConfig};
use crate::model::NetworkConfig;

/// The backend to train on. Every variant exists in every build, so that any run folder's
/// config reads; one whose cargo feature is off is refused with the feature to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Burn's pure-Rust `flex` backend on the CPU (the default: the faster CPU backend here, see
    /// docs/training-speed.md).
    Flex,
    /// The deprecated `ndarray` CPU backend (needs the `ndarray` feature).
    Ndarray,
    /// A GPU through wgpu: Vulkan, Metal or DX12, or Mesa's lavapipe on the CPU (needs the `wgpu`
    /// feature).
    Wgpu,
    /// An NVIDIA GPU through CUDA (needs the `cuda` feature and the NVIDIA driver).
    Cuda,
}

impl Backend {
    /// The inference device of this backend, or why this build has none.
    pub fn device(self) -> Result<Device> {
        match self {
            Backend::Flex => Ok(Device::flex()),
            #[cfg(feature = "ndarray")]
            #[allow(deprecated)] // kept for comparison, as the design asks
            Backend::Ndarray => Ok(Device::ndarray()),
            #[cfg(feature = "wgpu")]
            Backend::Wgpu => wgpu_device(),
            #[cfg(feature = "cuda")]
            Backend::Cuda => Ok(Device::cuda(0)),
            #[allow(unreachable_patterns)] // every variant may be compiled in
            other => bail!(
                "--backend {}: this fer-train was built without it; build with \
                 `cargo build --release -p fer-train --features {}`",
                other.name(),
                other.name()
            ),
        }
    }

    /// The name on the command line and in config.json.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Flex => "flex",
            Backend::Ndarray => "ndarray",
            Backend::Wgpu => "wgpu",
            Backend::Cuda => "cuda",
        }
    }
}

/// The wgpu device, set up once per process: the adapter wgpu ranks highest (a discrete GPU
/// before an integrated one, a software one such as lavapipe only when nothing else is there).
/// Set up here rather than on first use, so that a machine without one gets an error, not a panic
/// inside the first tensor operation.
#[cfg(feature = "wgpu")]
fn wgpu_device() -> Result<Device> {
    static DEVICE: std::sync::OnceLock<Result<Device, String>> = std::sync::OnceLock::new();
    DEVICE
        .get_or_init(|| {
            Device::wgpu_options()
                .device_kind(DeviceKind::DefaultDevice)
                .init()
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|e| {
            anyhow::anyhow!(
                "--backend wgpu: no usable graphics adapter ({e}); install the GPU's Vulkan driver, \
                 or mesa-vulkan-drivers for Mesa's lavapipe on the CPU"
            )
        })
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

/// Teachers (run folders of ours) and how much of each target they make
/// ([`crate::distill::blend_teachers`]).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Distill {
    /// Run folders whose reported weights teach; their softmaxes are averaged.
    pub teachers: Vec<PathBuf>,
    /// Share w of the teachers in the target: `(1 − w)·votes + w·teachers`.
    pub weight: f32,
    /// Temperature T of the teachers' softmax (above 1: softer distributions).
    pub temperature: f32,
    /// Whether each teacher also sees each face mirrored, its two softmaxes averaged (test-time
    /// flip averaging, as the sensor's `classify.flip`): a stronger teacher at no cost per step.
    #[serde(default)]
    pub flip: bool,
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
    /// Backend to train on.
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
    /// Distillation from runs of ours: their distribution blended into the targets
    /// (`None`: the data set's own targets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distill: Option<Distill>,
}

impl TrainConfig {
    /// Checks the values a run could otherwise train on to a NaN, a panic or a silent no-op;
    /// the error names the setting as the command line spells it.
    pub fn validate(&self) -> Result<()> {
        self.backend.device()?;
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
        if let Some(mix) = self.augment.and_then(|a| a.mix) {
            let alpha = f64::from(mix.alpha);
            finite("--mixup/--cutmix", alpha, alpha > 0.0, "above 0")?;
            let prob = f64::from(mix.prob);
            finite("--mix-prob", prob, (0.0..=1.0).contains(&prob), "0 to 1")?;
        }
        if let Some(decay) = self.ema {
            finite("--ema", decay, decay > 0.0 && decay < 1.0, "between 0 and 1")?;
        }
        if let Some(distill) = &self.distill {
            let weight = f64::from(distill.weight);
            finite(
                "--distill-weight",
                weight,
                weight > 0.0 && weight <= 1.0,
                "above 0, at most 1",
            )?;
            let t = f64::from(distill.temperature);
            finite("--distill-temperature", t, t > 0.0, "above 0")?;
            anyhow::ensure!(
                self.vote_labels,
                "--teacher blends the teachers into the vote distributions: it needs --votes on"
            );
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
            // (docs/model.md); 48 undisturbed epochs take about 55 minutes on 2 cores with the
            // training kernels.
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
            distill: None,
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
