//! `fer-export`: turn a fer-train checkpoint into the ONNX models the sensor runs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Parser;
use fer_export::calibrate::RangeMethod;
use fer_export::quantize::WeightScales;
use fer_export::{ExportOptions, export};
use fer_train::dataset::DatasetSpec;

/// Export a fer-train checkpoint to ONNX: f32, int8 (static post-training quantization through
/// tract), golden vectors and a report.
///
/// Writes OUT.f32.onnx, OUT.int8.onnx, OUT.golden.json, OUT.report.json and OUT.report.md, and only
/// once every check has passed: Burn-vs-tract parity of the f32 model, int8-vs-f32 agreement and
/// accuracy on the evaluation images. Both models carry the contract (labels, input spec, output
/// names, version, weight checksum, training and evaluation summary) in their ONNX metadata.
///
/// Data sets are KIND:PATH as in fer-train (ferplus:DIR, rafdb:DIR, fer2013:FILE, folders:DIR).
///
/// Example: fer-export --checkpoint runs/ferplus-default --calibration ferplus:../shared/data/ferplus
///          --out models/fer
#[derive(Parser)]
#[command(version, verbatim_doc_comment)]
struct Cli {
    /// Run folder written by `fer-train train` (config.json and model.burnpack).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Data set whose training images calibrate the int8 activation ranges.
    #[arg(long)]
    calibration: DatasetSpec,
    /// Output prefix (directories are created).
    #[arg(long)]
    out: PathBuf,
    /// Number of calibration images, spread evenly over the training split.
    #[arg(long, default_value_t = 500)]
    calibration_images: usize,
    /// Refuse to calibrate on fewer usable images than this.
    #[arg(long, default_value_t = 100)]
    min_calibration_images: usize,
    /// Data set whose validation split checks parity and int8 quality [default: the run's data].
    #[arg(long)]
    evaluation: Option<DatasetSpec>,
    /// Images in the Burn-vs-tract parity check.
    #[arg(long, default_value_t = 200)]
    parity_images: usize,
    /// Largest acceptable |Δlogit| between Burn and the f32 ONNX model in tract.
    #[arg(long, default_value_t = 1e-4)]
    max_parity_error: f32,
    /// Smallest acceptable top-1 agreement of int8 with f32 (a fraction).
    #[arg(long, default_value_t = 0.99)]
    min_agreement: f64,
    /// Largest acceptable int8 accuracy loss against f32 (a fraction: 0.01 is one point).
    #[arg(long, default_value_t = 0.01)]
    max_accuracy_drop: f64,
    /// Weight scales of the int8 convs: per-tensor runs on tract's integer matmul; per-channel is
    /// more precise and slower; auto picks per-channel only where per-tensor loses too much.
    #[arg(long, value_enum, default_value = "per-channel")]
    weight_scales: WeightScales,
    /// Quantize without equalizing depthwise → pointwise conv pairs first (equalizing balances
    /// their channel ranges and leaves the f32 function unchanged).
    #[arg(long)]
    no_equalize: bool,
    /// Convs to leave in f32 in the int8 model, by position in graph order from 0 (the report's
    /// conv table lists them in that order): `--f32-convs 0,13`.
    #[arg(long, value_delimiter = ',')]
    f32_convs: Vec<usize>,
    /// How activation ranges come from the calibration values: min-max (nothing clips) or mse
    /// (the clipping with the least expected squared error; a second calibration pass).
    #[arg(long, value_enum, default_value = "mse")]
    activation_ranges: RangeMethod,
}

fn run(cli: Cli) -> Result<()> {
    let options = ExportOptions {
        checkpoint: cli.checkpoint,
        calibration: cli.calibration,
        calibration_images: cli.calibration_images,
        min_calibration_images: cli.min_calibration_images,
        evaluation: cli.evaluation,
        parity_images: cli.parity_images,
        max_parity_error: cli.max_parity_error,
        min_agreement: cli.min_agreement,
        max_accuracy_drop: cli.max_accuracy_drop,
        weight_scales: cli.weight_scales,
        equalize: !cli.no_equalize,
        f32_convs: cli.f32_convs,
        activation_ranges: cli.activation_ranges,
        out: cli.out,
    };
    let report = export(&options)?;
    print!("{}", fer_export::report::markdown(&report, &options));
    for file in &report.files {
        println!("wrote {}", file.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
