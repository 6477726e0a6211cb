//! One function per `fer-train` subcommand: what it does once its flags are parsed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use burn::module::Module;
use burn::prelude::Device;
use fer_protocol::Expression;
use fer_train::compare::{self, Finished};
use fer_train::config::{Backend, TrainConfig};
use fer_train::dataset::{DatasetSpec, LoadOptions, Split};
use fer_train::metrics::Metrics;
use fer_train::model::{ExpressionNet, NetworkConfig};
use fer_train::predictions::{self, Predictions};
use fer_train::run::{Run, files, read_json};

use crate::{EvalArgs, Weights};
use fer_train::{bench, embedding, report, training};
use tracing::warn;

/// The exit status of a training stopped by Ctrl-C: the shell's code for SIGINT, so a script
/// running several trainings (scripts/compare.sh) stops rather than go on as if it had finished.
pub const INTERRUPTED: u8 = 130;

/// `train`: a new run from `config` in `out`, or the run in `resume` continued. Returns whether
/// Ctrl-C stopped it.
pub fn train(config: Option<TrainConfig>, out: &Path, resume: Option<&Path>) -> Result<bool> {
    training::stop_on_ctrl_c();
    let (config, run, resume) = match (resume, config) {
        (Some(dir), _) => {
            let run = Run::at(dir);
            (run.config()?, run, true)
        }
        (None, Some(config)) => (config, Run::at(out), false),
        (None, None) => unreachable!("clap requires --data without --resume"),
    };
    let started = Instant::now();
    let summary = training::train(&config, &run, resume)?;
    println!("{}", summary.valid);
    println!(
        "run folder: {}  ({} epochs, {:.0} s, {:.0} images/s training{})",
        run.dir().display(),
        summary.epochs_done,
        started.elapsed().as_secs_f64(),
        summary.images_per_second,
        if summary.interrupted { ", interrupted" } else { "" }
    );
    if summary.interrupted {
        warn!(
            "interrupted: resume with `fer-train train --resume {}`",
            run.dir().display()
        );
    }
    Ok(summary.interrupted)
}

/// `eval`: a run's model on a split, with the logit-adjustment sweep if asked.
pub fn eval(args: &EvalArgs) -> Result<()> {
    let device = args.backend.device()?;
    let run = Run::at(&args.run);
    let (model, config) = match args.weights {
        Weights::Reported => run.load_model(&device)?,
        Weights::Trained => {
            let config = run.config()?;
            (run.load_weights(files::MODEL, &config, &device)?, config)
        }
    };
    let spec = args.data.clone().unwrap_or_else(|| config.valid_spec().clone());
    let samples = spec
        .load_verbose(
            args.split.into(),
            LoadOptions {
                skip_bad: args.skip_bad,
            },
        )?
        .samples;
    let started = Instant::now();
    let logits = training::logits(&model, &samples, &device);
    let metrics = Metrics::of_logits(&logits, [0.0; Expression::COUNT], &samples);
    println!("{metrics}");
    println!(
        "evaluated {} images in {:.1} s",
        samples.len(),
        started.elapsed().as_secs_f64()
    );
    if args.sweep_logit_adjustment {
        let counts = training::train_class_counts(&config)?;
        print!("{}", report::logit_adjustment_table(&logits, &samples, &counts));
    }
    Ok(())
}

/// `adjust`: a logit-adjusted copy of a finished run.
pub fn adjust(run: &Path, tau: f32, out: &Path) -> Result<()> {
    let valid = training::adjust(&Run::at(run), tau, &Run::at(out))?;
    println!("{valid}");
    println!("wrote {} (τ = {tau})", out.display());
    Ok(())
}

/// `inspect`: both splits' class distributions, even when one fails to load.
pub fn inspect(data: &DatasetSpec, skip_bad: bool) -> Result<()> {
    let mut failed = 0;
    for split in [Split::Train, Split::Valid] {
        if let Err(error) = data.load_verbose(split, LoadOptions { skip_bad }) {
            warn!("{split}: {error}");
            failed += 1;
        }
    }
    ensure!(failed == 0, "{failed} of the 2 splits did not load");
    Ok(())
}

/// `predictions`: each run's answers face by face, and how well each flag finds its errors.
pub fn predictions(runs: &[PathBuf]) -> Result<()> {
    let device = Device::flex();
    for dir in runs {
        let predictions = Predictions::load_or_write(&Run::at(dir), &device)?;
        let or_na = |auroc: Option<f64>| auroc.map_or_else(|| "n/a".to_string(), |a| format!("{a:.3}"));
        let auroc = predictions.error_auroc().map_or_else(
            || "n/a (no wrong or no right answer)".to_string(),
            |a| format!("{a:.3}"),
        );
        let ratio = or_na(predictions.ratio_error_auroc());
        let confidence = or_na(predictions.confidence_error_auroc());
        println!(
            "{}: {} faces, accuracy {:.2} %, error AUROC of the nearest-center distance {auroc} \
            ({}), of nearest / second-nearest {ratio}, of 1 - top probability {confidence}",
            dir.display(),
            predictions.labels.len(),
            100.0 * predictions.metrics(0..predictions.labels.len()).accuracy,
            if predictions.trained_centers {
                "trained centers"
            } else {
                "class means of the training split"
            }
        );
        // The sensor's `uncertain` on a face's first frame: its top probability under
        // decide.min_confidence (0.4 by default).
        for threshold in [0.3, 0.4, 0.5, 0.6] {
            println!("  uncertain {}", predictions.flag_at(threshold));
        }
    }
    Ok(())
}

/// `record`: a finished run's record without checkpoint or labels.
pub fn record(run: &Path, to: &Path) -> Result<()> {
    predictions::write_record(&Run::at(run), &Run::at(to), &Device::flex())?;
    println!("recorded {} in {}", run.display(), to.display());
    Ok(())
}

/// `curves`: the runs' valid accuracy per epoch in one image.
pub fn curves(runs: &[PathBuf], out: &Path, converged: Option<&Path>) -> Result<()> {
    let runs = runs
        .iter()
        .map(|path| Finished::load(path).map(|run| (run.label(), run.records)))
        .collect::<Result<Vec<_>>>()?;
    let converged = converged
        .map(|path| converged_reference(path).with_context(|| format!("--converged {}", path.display())))
        .transpose()?;
    let reference = converged.as_ref().map(|(name, metrics)| report::Reference {
        name: name.clone(),
        metrics,
    });
    report::plot_runs(&runs, reference.as_ref(), out)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// The legend and final figures of `--converged`: a run folder's report, or the f32 figures of
/// an export report (`fer-export`'s, which names the run and epoch it exported).
fn converged_reference(path: &Path) -> Result<(String, Metrics)> {
    if path.is_dir() {
        let run = Finished::load(path)?;
        return Ok((
            format!("converged: {}, {} epochs", run.label(), run.config.epochs),
            run.report,
        ));
    }
    #[derive(serde::Deserialize)]
    struct ExportReport {
        model_version: String,
        f32_metrics: Metrics,
    }
    let report: ExportReport = read_json(path)?;
    Ok((
        format!("converged: {} (exported, f32)", report.model_version),
        report.f32_metrics,
    ))
}

/// `embedding`: a run's valid embeddings projected to 2-D, and how separate the classes are.
pub fn embedding(run: &Path, data: Option<DatasetSpec>, out: &Path) -> Result<()> {
    let device = Device::flex();
    let (model, config) = Run::at(run).load_model(&device)?;
    let name = compare::configuration(&config);
    let spec = data.unwrap_or_else(|| config.valid_spec().clone());
    let samples = spec.load_verbose(Split::Valid, LoadOptions::default())?.samples;
    let embedded = embedding::embed(&model, &samples, &device);
    let separation = embedding::Separation::measure(&embedded);
    println!(
        "{} faces: within-class {:.3}, nearest other class {:.3}, ratio {:.3}, nearest class mean \
        right for {:.1} %",
        embedded.points.len(),
        separation.within,
        separation.between,
        separation.ratio(),
        100.0 * separation.nearest_mean_accuracy
    );
    let projected = embedding::pca2(&embedded.points);
    let title = format!(
        "{name} ({}), within/between {:.3}",
        run.file_name()
            .map_or(String::new(), |n| n.to_string_lossy().into_owned()),
        separation.ratio()
    );
    report::plot_embedding(&projected, &embedded.labels, &title, out)?;
    println!("wrote {}", out.display());
    Ok(())
}

/// `info`: the network's size and cost.
pub fn info(config: &NetworkConfig) {
    let model = ExpressionNet::new(config, &Device::flex());
    println!(
        "input:          {}x{}x{} ({}..{})",
        fer_protocol::INPUT.channels,
        fer_protocol::INPUT.height,
        fer_protocol::INPUT.width,
        -1,
        1
    );
    println!(
        "backbone:       {:?}, widths {:?}, depths {:?}, embedding {}",
        config.backbone, config.widths, config.depths, config.embedding_dim
    );
    println!("parameters:     {}", model.num_params());
    println!("multiply-adds:  {:.2} M per face", config.multiply_adds() as f64 / 1e6);
}

/// `bench`: training steps timed per backend, with the per-op profile if asked.
pub fn bench(network: &NetworkConfig, steps: usize, batch_size: usize, backends: &[Backend], ops: bool) -> Result<()> {
    ensure!(steps > 0, "--steps must be at least 1");
    ensure!(batch_size > 0, "--batch-size must be at least 1");
    for &backend in backends {
        let device = backend.device()?;
        if ops {
            let profile = bench::profile_ops(&device, network, batch_size, steps);
            print!("{backend:?}, batch {batch_size}:\n{}", bench::profile_table(&profile));
        }
        let ms = bench::train_step_ms(&device, network, batch_size, steps);
        println!(
            "{backend:?}: {ms:.1} ms per training step of {batch_size} ({:.0} images/s)",
            batch_size as f64 * 1000.0 / ms
        );
    }
    Ok(())
}
