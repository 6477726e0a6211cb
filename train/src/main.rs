//! `fer-train`: train and evaluate the facial-expression classifier.

mod commands;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use fer_train::augment::{Mix, MixKind};
use fer_train::compare;
use fer_train::config::{Backend, Distill, TclConfig, TrainConfig};
use fer_train::dataset::{DatasetSpec, Split};
use fer_train::loss::Negatives;
use fer_train::model::{Backbone, NetworkConfig};
use tracing_subscriber::EnvFilter;

/// Train the facial-expression classifier (CNN + selective attention + triplet-center loss).
///
/// Data sets are given as KIND:PATH:
///   ferplus:DIR   FER+ (DIR/FER2013Train/label.csv, DIR/FER2013Valid/label.csv)
///   rafdb:DIR     RAF-DB basic (DIR/EmoLabel/list_patition_label.txt, DIR/Image/aligned/)
///   fer2013:FILE  the FER2013 CSV (emotion,pixels,Usage)
///   folders:DIR   DIR/[train|valid/]<label>/*.png|jpg
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a model and write a run folder (checkpoint, config, metrics, report, plots).
    Train(Box<TrainArgs>),
    /// Evaluate a run folder's checkpoint on a data set split.
    Eval(EvalArgs),
    /// Write a copy of a finished run whose classifier subtracts τ·log(class prior) from its
    /// logits (post-hoc logit adjustment, Menon et al. 2021); export that copy to ship it.
    Adjust {
        /// Run folder written by `fer-train train`.
        run: PathBuf,
        /// τ: 0 changes nothing, 1 is the theory's choice; pick it with `eval --sweep-logit-adjustment`.
        #[arg(long)]
        tau: f32,
        /// Run folder to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Show a data set's class distribution without training.
    Inspect {
        /// Data set to load.
        data: DatasetSpec,
        /// Skip and count bad rows and images instead of stopping.
        #[arg(long)]
        skip_bad: bool,
    },
    /// Print a markdown table comparing finished runs (mean ± spread over seeds per configuration).
    Compare {
        /// Run folders written by `fer-train train`, all with the same budget.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
    },
    /// Write each finished run's answers on its valid split, face by face (RUN/predictions.json,
    /// kept if present), for `compare`'s paired statistics and its error AUROC, and print how well
    /// the distance to the nearest class center flags the run's wrong answers.
    Predictions {
        /// Run folders written by `fer-train train`.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
    },
    /// Copy a finished run's configuration, epochs, report and predictions (without checkpoint or
    /// labels) to a folder that `compare` and `curves` read as the run: what a comparison commits
    /// so that it can span sittings that keep nothing but the repository.
    Record {
        /// Run folder written by `fer-train train`, finished.
        run: PathBuf,
        /// Folder to write.
        #[arg(long)]
        to: PathBuf,
    },
    /// Draw several finished runs' valid accuracy per epoch in one image.
    Curves {
        /// Run folders written by `fer-train train`; each line is named after its configuration.
        #[arg(required = true)]
        runs: Vec<PathBuf>,
        /// PNG file to write.
        #[arg(long)]
        out: PathBuf,
        /// A full-length run drawn as a dashed line at its final figures, to show how far the
        /// runs' budget is from convergence: a run folder, or an export report such as
        /// models/fer.report.json (the shipped model's f32 figures on valid).
        #[arg(long, value_name = "RUN|REPORT")]
        converged: Option<PathBuf>,
    },
    /// Project a run's embeddings of the valid split onto 2-D (PCA), draw them coloured by class
    /// and print how tight and separate the classes are.
    Embedding {
        /// Run folder written by `fer-train train`.
        run: PathBuf,
        /// Data set whose valid split to embed (default: the run's valid data).
        #[arg(long)]
        data: Option<DatasetSpec>,
        /// PNG file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Print the network's parameter count and multiply-adds per face.
    Info {
        #[command(flatten)]
        network: NetworkArgs,
    },
    /// Time training steps (CE + TCL) of a network on random inputs, per backend.
    Bench {
        #[command(flatten)]
        network: NetworkArgs,
        /// Steps to time (after 2 warm-up steps).
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Images per step.
        #[arg(long, default_value_t = 64)]
        batch_size: usize,
        /// Backends to time (ndarray, wgpu and cuda need their cargo features; ndarray takes about
        /// a minute per step here).
        #[arg(long, value_enum, num_args = 1.., default_values = ["flex"])]
        backend: Vec<Backend>,
        /// Also time every op of the network on its own, forward and backward (a markdown table).
        #[arg(long)]
        ops: bool,
    },
}

/// The network's shape, shared by `train`, `info` and `bench`.
#[derive(clap::Args)]
struct NetworkArgs {
    /// Backbone: `separable` (v2: depthwise-separable blocks, widths 32, 64, 128, 256) or
    /// `plain` (v1: 3x3 conv blocks, widths 16, 32, 96, 192).
    #[arg(long, value_enum, default_value = "separable")]
    backbone: Backbone,
    /// Channels of the four stages (default: the backbone's).
    #[arg(long, value_parser = four_counts, value_name = "W1,W2,W3,W4")]
    widths: Option<[usize; 4]>,
    /// Blocks in each of the four stages (default: the backbone's).
    #[arg(long, value_parser = four_counts, value_name = "D1,D2,D3,D4")]
    depths: Option<[usize; 4]>,
    /// Selective attention module on or off (the ablation).
    #[arg(long, value_enum, default_value = "on")]
    attention: OnOff,
    /// Dropout before the classifier (default: the network's, 0.3; 0 in --smoke runs).
    #[arg(long)]
    dropout: Option<f64>,
}

impl NetworkArgs {
    fn config(&self) -> NetworkConfig {
        let mut config = match self.backbone {
            Backbone::Separable => NetworkConfig::default(),
            Backbone::Plain => NetworkConfig::plain(),
        };
        config.widths = self.widths.unwrap_or(config.widths);
        config.depths = self.depths.unwrap_or(config.depths);
        config.attention = self.attention == OnOff::On;
        config.dropout = self.dropout.unwrap_or(config.dropout);
        config
    }
}

/// Parses four positive counts separated by commas, e.g. `32,64,128,256`.
fn four_counts(text: &str) -> Result<[usize; 4], String> {
    let counts = text
        .split(',')
        .map(|part| match part.trim().parse::<usize>() {
            Ok(0) | Err(_) => Err(format!("{part:?} is not a positive whole number")),
            Ok(n) => Ok(n),
        })
        .collect::<Result<Vec<_>, _>>()?;
    counts
        .try_into()
        .map_err(|counts: Vec<usize>| format!("expected 4 comma-separated counts, got {}", counts.len()))
}

/// The weights `eval` loads.
#[derive(Clone, Copy, PartialEq, ValueEnum)]
pub(crate) enum Weights {
    /// What the run reports: the average in a run that keeps one, else the weights.
    Reported,
    /// The trained weights, without the average.
    Trained,
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum SplitArg {
    Train,
    Valid,
}

impl From<SplitArg> for Split {
    fn from(split: SplitArg) -> Self {
        match split {
            SplitArg::Train => Split::Train,
            SplitArg::Valid => Split::Valid,
        }
    }
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum LossArg {
    /// Cross-entropy only (the baseline).
    Ce,
    /// Cross-entropy + λ · triplet-center loss.
    Tcl,
}

#[derive(Clone, Copy, PartialEq, ValueEnum)]
enum NegativesArg {
    /// Nearest other-class center.
    Fully,
    /// α · hardest in-batch negative + (1 − α) · its class center.
    Semi,
    /// Center of the classifier's most confusable other class.
    Prediction,
}

/// `eval`'s flags.
#[derive(clap::Args)]
pub(crate) struct EvalArgs {
    /// Run folder written by `fer-train train`.
    pub(crate) run: PathBuf,
    /// Data set to evaluate on (default: the run's valid data).
    #[arg(long)]
    pub(crate) data: Option<DatasetSpec>,
    /// Which split.
    #[arg(long, value_enum, default_value = "valid")]
    pub(crate) split: SplitArg,
    /// Skip and count bad rows and images instead of stopping.
    #[arg(long)]
    pub(crate) skip_bad: bool,
    /// Also tabulate post-hoc logit adjustment (logits − τ·log π, π the training split's
    /// class frequencies) for τ from 0 to 2: accuracy against minority-class recall.
    #[arg(long)]
    pub(crate) sweep_logit_adjustment: bool,
    /// Backend to evaluate on.
    #[arg(long, value_enum, default_value = "flex")]
    pub(crate) backend: Backend,
    /// Which weights of a run that keeps a weight average (`--ema`): the average it reports
    /// and exports, or the trained weights themselves.
    #[arg(long, value_enum, default_value = "reported")]
    pub(crate) weights: Weights,
}

#[derive(clap::Args)]
struct TrainArgs {
    /// Training data (its train split is used).
    #[arg(long, required_unless_present = "resume")]
    data: Option<DatasetSpec>,
    /// Evaluation data (its valid split); default: the same data set.
    #[arg(long)]
    valid: Option<DatasetSpec>,
    /// Run folder to write.
    #[arg(long, default_value = "runs/latest")]
    out: PathBuf,
    /// Continue the run in this folder from its last checkpoint, with its saved settings (one
    /// stopped before its first checkpoint starts over). Takes no other flag: the settings are
    /// its config.json's, and a flag given beside it would be ignored.
    #[arg(long, exclusive = true)]
    resume: Option<PathBuf>,
    /// Loss: the cross-entropy baseline or CE + triplet-center loss.
    #[arg(long, value_enum, default_value = "tcl")]
    loss: LossArg,
    /// How the triplet-center loss picks its negative.
    #[arg(long, value_enum, default_value = "semi")]
    negatives: NegativesArg,
    /// Weight α of the real sample in a semi-synthesized negative.
    #[arg(long, default_value_t = 0.5)]
    alpha: f32,
    /// Weight λ of the triplet-center loss.
    #[arg(long, default_value_t = 0.01)]
    lambda: f32,
    /// Triplet-center loss margin m (on squared distances).
    #[arg(long, default_value_t = 1.0)]
    margin: f32,
    #[command(flatten)]
    network: NetworkArgs,
    /// Cross-entropy against the annotators' vote distributions (FER+; other data sets have
    /// none and keep their hard labels) or against the majority label only.
    #[arg(long, value_enum, default_value = "on")]
    votes: OnOff,
    /// Label smoothing ε of the cross-entropy targets.
    #[arg(long)]
    label_smoothing: Option<f32>,
    /// Logit adjustment τ against class imbalance: the loss sees logits + τ·log(class prior)
    /// (Menon et al., 2021); 0 turns it off, 1 is the theory's choice.
    #[arg(long, default_value_t = 0.0)]
    logit_adjust: f32,
    /// Class-weighted cross-entropy: a class-k sample weighs n_k^(−p) (0: off, 1: inverse
    /// frequency, 0.5: the square root); weights average 1 over the training set.
    #[arg(long, default_value_t = 0.0)]
    class_weight_power: f32,
    /// Number of epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Images per batch.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate (AdamW, warm-up then cosine decay).
    #[arg(long)]
    lr: Option<f64>,
    /// Seed for initialisation, shuffling and augmentation.
    #[arg(long)]
    seed: Option<u64>,
    /// Backend to train on (wgpu and cuda need the cargo features of those names; see the
    /// README's "Training on a GPU").
    #[arg(long, value_enum, default_value = "flex")]
    backend: Backend,
    /// Turn training augmentation off.
    #[arg(long)]
    no_augment: bool,
    /// Keep an exponential moving average of the weights with this decay per step (e.g. 0.999),
    /// and report and export the average instead of the last weights.
    #[arg(long, value_name = "DECAY", value_parser = decay)]
    ema: Option<f64>,
    /// Random erasing: the probability that a training crop gets a rectangle of noise (0: off).
    #[arg(long, value_name = "P", conflicts_with = "no_augment", value_parser = probability)]
    erase: Option<f32>,
    /// mixup: blend a training face with another of its batch in a share λ ~ Beta(ALPHA, ALPHA),
    /// against the same blend of their targets (e.g. 0.2).
    #[arg(long, value_name = "ALPHA", conflicts_with_all = ["no_augment", "cutmix"])]
    mixup: Option<f32>,
    /// CutMix: paste a box of another face of the batch covering 1 − λ of the crop,
    /// λ ~ Beta(ALPHA, ALPHA), against targets mixed by area (e.g. 1.0).
    #[arg(long, value_name = "ALPHA", conflicts_with = "no_augment")]
    cutmix: Option<f32>,
    /// The probability that a training face is mixed, with --mixup or --cutmix.
    #[arg(long, value_name = "P", default_value_t = 0.5, value_parser = probability)]
    mix_prob: f32,
    /// Distil from a run folder of ours (repeat for an ensemble, whose softmaxes are averaged):
    /// each training face's target becomes (1 − W)·votes + W·teachers.
    #[arg(long, value_name = "RUN")]
    teacher: Vec<PathBuf>,
    /// The teachers' share W of each target, with --teacher.
    #[arg(long, value_name = "W", default_value_t = 0.5, requires = "teacher")]
    distill_weight: f32,
    /// The temperature of the teachers' softmax (above 1: softer targets), with --teacher.
    #[arg(long, value_name = "T", default_value_t = 1.0, requires = "teacher")]
    distill_temperature: f32,
    /// Each teacher also sees each face mirrored and its two softmaxes are averaged (test-time
    /// flip averaging, as the sensor's classify.flip does), with --teacher.
    #[arg(long, requires = "teacher")]
    distill_flip: bool,
    /// Use only the first N images of each split.
    #[arg(long)]
    limit: Option<usize>,
    /// Make the training split long-tailed, the largest class RATIO times the smallest: the k-th
    /// most frequent class keeps n_max · RATIO^(-k/6) faces, the same seeded choice for every run;
    /// valid stays whole (the paper comparison's harsher setting; FER+ train is about 75 as it is).
    #[arg(long, value_name = "RATIO")]
    imbalance: Option<f32>,
    /// Skip and count bad rows and images instead of stopping.
    #[arg(long)]
    skip_bad: bool,
    /// A tiny network and 64 images for 2 epochs: checks a setup in seconds.
    #[arg(long)]
    smoke: bool,
    /// Fine-tune: start from this run folder's weights (same network) with a fresh optimizer
    /// and schedule, e.g. a few more epochs at a lower --lr.
    #[arg(long)]
    init: Option<PathBuf>,
}

impl TrainArgs {
    fn config(&self, data: DatasetSpec) -> TrainConfig {
        let mut config = if self.smoke {
            TrainConfig::smoke(data)
        } else {
            TrainConfig::new(data)
        };
        config.valid = self.valid.clone();
        config.tcl = (self.loss == LossArg::Tcl).then_some(TclConfig {
            negatives: match self.negatives {
                NegativesArg::Fully => Negatives::FullySynthesized,
                NegativesArg::Semi => Negatives::SemiSynthesized { alpha: self.alpha },
                NegativesArg::Prediction => Negatives::PredictionBased,
            },
            lambda: self.lambda,
            margin: self.margin,
        });
        config.network = if self.smoke {
            NetworkConfig {
                backbone: self.network.backbone,
                attention: self.network.attention == OnOff::On,
                dropout: self.network.dropout.unwrap_or(0.0),
                ..NetworkConfig::tiny()
            }
        } else {
            self.network.config()
        };
        config.vote_labels = self.votes == OnOff::On;
        config.label_smoothing = self.label_smoothing.unwrap_or(config.label_smoothing);
        config.logit_adjustment = self.logit_adjust;
        config.class_weight_power = self.class_weight_power;
        config.epochs = self.epochs.unwrap_or(config.epochs);
        config.batch_size = self.batch_size.unwrap_or(config.batch_size);
        config.lr = self.lr.unwrap_or(config.lr);
        config.init = self.init.clone();
        config.seed = self.seed.unwrap_or(config.seed);
        config.backend = self.backend;
        if self.no_augment {
            config.augment = None;
        }
        config.ema = self.ema;
        if let (Some(erase), Some(augment)) = (self.erase, &mut config.augment) {
            augment.erase = erase;
        }
        if let Some(augment) = &mut config.augment {
            let mix = |kind, alpha| Mix {
                kind,
                alpha,
                prob: self.mix_prob,
            };
            augment.mix = match (self.mixup, self.cutmix) {
                (Some(alpha), _) => Some(mix(MixKind::Mixup, alpha)),
                (_, Some(alpha)) => Some(mix(MixKind::CutMix, alpha)),
                (None, None) => None,
            };
        }
        config.distill = (!self.teacher.is_empty()).then(|| Distill {
            teachers: self.teacher.clone(),
            weight: self.distill_weight,
            temperature: self.distill_temperature,
            flip: self.distill_flip,
        });
        config.limit = self.limit.or(config.limit);
        config.imbalance = self.imbalance;
        config.skip_bad = self.skip_bad;
        config
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .without_time()
        .with_target(false)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    let cli = Cli::parse();
    let done = match cli.command {
        Command::Train(args) => {
            let config = args.data.clone().map(|data| args.config(data));
            commands::train(config, &args.out, args.resume.as_deref()).map(|interrupted| {
                if interrupted {
                    ExitCode::from(commands::INTERRUPTED)
                } else {
                    ExitCode::SUCCESS
                }
            })
        }
        Command::Eval(args) => commands::eval(&args).map(success),
        Command::Adjust { run, tau, out } => commands::adjust(&run, tau, &out).map(success),
        Command::Inspect { data, skip_bad } => commands::inspect(&data, skip_bad).map(success),
        Command::Compare { runs } => compare::table(&runs).map(|table| print!("{table}")).map(success),
        Command::Predictions { runs } => commands::predictions(&runs).map(success),
        Command::Record { run, to } => commands::record(&run, &to).map(success),
        Command::Curves { runs, out, converged } => commands::curves(&runs, &out, converged.as_deref()).map(success),
        Command::Embedding { run, data, out } => commands::embedding(&run, data, &out).map(success),
        Command::Info { network } => {
            commands::info(&network.config());
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench {
            network,
            steps,
            batch_size,
            backend,
            ops,
        } => commands::bench(&network.config(), steps, batch_size, &backend, ops).map(success),
    };
    done.unwrap_or_else(|error| {
        eprintln!("error: {error:#}");
        ExitCode::FAILURE
    })
}

fn success(_: ()) -> ExitCode {
    ExitCode::SUCCESS
}

/// Tells glibc's allocator to keep freed memory for reuse instead of handing it back to the kernel.
///
/// A training step allocates and frees activations of up to 19 MB each (64 × 32 × 48 × 48
/// floats). By default glibc serves blocks that large with fresh `mmap`s, or trims them off the
/// heap once freed, so every step faults and zeroes its memory in page by page again: a v2 step
/// took 291 ms that way and 188 ms with the memory kept (`fer-train bench`, docs/training-speed.md).
/// The cost is a resident size that stays at its peak, as it does in any framework's caching
/// allocator.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    // SAFETY: mallopt only changes allocator parameters; it runs before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Other allocators are left as they are.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// A moving-average decay: a number in (0, 1).
fn decay(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(d) if d > 0.0 && d < 1.0 => Ok(d),
        _ => Err(format!(
            "{text:?} is not a decay (a number between 0 and 1, e.g. 0.999)"
        )),
    }
}

/// A probability flag: a number in 0..=1.
fn probability(text: &str) -> Result<f32, String> {
    match text.parse::<f32>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a probability (a number in 0..=1)")),
    }
}
