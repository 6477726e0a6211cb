//! What an export is asked to do: the flags of `fer-export`, checked before any work.

use std::path::PathBuf;

use anyhow::{Result, ensure};
use fer_train::dataset::DatasetSpec;

use crate::calibrate::RangeMethod;
use crate::quantize::WeightScales;

/// Everything `fer-export` needs to know: its command-line flags, and what the tests build.
#[derive(Clone, Debug, clap::Args)]
pub struct ExportOptions {
    /// Run folder written by `fer-train train` (config.json and model.burnpack; `--checkpoint`
    /// is its older name).
    #[arg(long, alias = "checkpoint")]
    pub run: PathBuf,
    /// Data set whose training images calibrate the int8 activation ranges.
    #[arg(long)]
    pub calibration: DatasetSpec,
    /// Number of calibration images, spread evenly over the training split.
    #[arg(long, default_value_t = 500)]
    pub calibration_images: usize,
    /// Refuse to calibrate on fewer usable images than this.
    #[arg(long, default_value_t = 100)]
    pub min_calibration_images: usize,
    /// Data set whose validation split checks parity and int8 quality [default: the run's data].
    #[arg(long)]
    pub evaluation: Option<DatasetSpec>,
    /// Images in the Burn-vs-tract parity check.
    #[arg(long, default_value_t = 200)]
    pub parity_images: usize,
    /// Largest acceptable |Δlogit| between Burn and the f32 ONNX model in tract.
    #[arg(long, default_value_t = 1e-4)]
    pub max_parity_error: f32,
    /// Smallest acceptable top-1 agreement of int8 with f32 (a fraction).
    #[arg(long, default_value_t = 0.99)]
    pub min_agreement: f64,
    /// Largest acceptable int8 accuracy loss against f32 (a fraction: 0.01 is one point).
    #[arg(long, default_value_t = 0.01)]
    pub max_accuracy_drop: f64,
    /// Weight scales of the int8 convs: per-tensor runs on tract's integer matmul; per-channel is
    /// more precise and slower; auto picks per-channel only where per-tensor loses too much.
    #[arg(long, value_enum, default_value = "per-channel")]
    pub weight_scales: WeightScales,
    /// Quantize without equalizing depthwise → pointwise conv pairs first (equalizing balances
    /// their channel ranges and leaves the f32 function unchanged; on unless this flag is given).
    #[arg(long = "no-equalize", action = clap::ArgAction::SetFalse)]
    pub equalize: bool,
    /// Convs to leave in f32 in the int8 model, by position in graph order from 0 (the report's
    /// conv table lists them in that order): `--f32-convs 0,13`.
    #[arg(long, value_delimiter = ',')]
    pub f32_convs: Vec<usize>,
    /// How activation ranges come from the calibration values: min-max (nothing clips) or mse
    /// (the clipping with the least expected squared error; a second calibration pass).
    #[arg(long, value_enum, default_value = "mse")]
    pub activation_ranges: RangeMethod,
    /// Output prefix: writes `PREFIX.f32.onnx`, `PREFIX.int8.onnx`, `PREFIX.golden.json`,
    /// `PREFIX.report.json` and `PREFIX.report.md` (directories are created).
    #[arg(long)]
    pub out: PathBuf,
}

impl ExportOptions {
    /// Checks the settings a run would otherwise report as passed; errors name the flag.
    pub fn validate(&self) -> Result<()> {
        ensure!(
            self.min_calibration_images >= 1,
            "--min-calibration-images must be at least 1"
        );
        ensure!(
            self.calibration_images >= self.min_calibration_images,
            "--calibration-images {} is under --min-calibration-images {}: int8 ranges from so few images do not hold",
            self.calibration_images,
            self.min_calibration_images
        );
        ensure!(self.parity_images >= 1, "--parity-images must be at least 1");
        ensure!(
            self.max_parity_error > 0.0 && self.max_parity_error.is_finite(),
            "--max-parity-error {} must be a positive number",
            self.max_parity_error
        );
        ensure!(
            (0.0..=1.0).contains(&self.min_agreement),
            "--min-agreement {} is a fraction: it must lie in 0..=1",
            self.min_agreement
        );
        let out = self.out.to_string_lossy();
        ensure!(
            !out.ends_with('/') && self.out.file_name().is_some(),
            "--out {out}: a prefix for the files (e.g. models/fer), not a folder"
        );
        // Negative is a gate that int8 must beat f32 by as much: strict, but well defined.
        ensure!(
            self.max_accuracy_drop.is_finite() && self.max_accuracy_drop <= 1.0,
            "--max-accuracy-drop {} is a fraction of accuracy: a number no larger than 1",
            self.max_accuracy_drop
        );
        Ok(())
    }
}
