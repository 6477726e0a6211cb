//! Golden-output checks shared by the host and the device targets.
//!
//! The shipped models and their golden vectors are compiled into the test binary
//! (`include_bytes!`), so the same binary runs under qemu here and when copied to a Pi, with no
//! files to carry along. Each check returns what drifted instead of panicking, so a test can also
//! show that a drift is caught.
#![warn(missing_docs)]

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail, ensure};
use fer_protocol::INPUT;
use fer_protocol::contract::{self, ModelInfo};
use fer_protocol::golden::{GoldenCase, GoldenOutputs, GoldenSet};
use tract_onnx::prelude::*;

/// The shipped f32 model.
pub const F32_MODEL: &[u8] = include_bytes!("../../models/ferplus-default.f32.onnx");
/// The shipped int8 model.
pub const INT8_MODEL: &[u8] = include_bytes!("../../models/ferplus-default.int8.onnx");
/// Their golden vectors, written by fer-export together with the models.
pub const GOLDEN: &[u8] = include_bytes!("../../models/ferplus-default.golden.json");

/// Largest |Δ| allowed on an f32 model output. x86 (FMA) and ARM (NEON) kernels sum the products
/// in different orders and block sizes. Measured against the x86 golden vectors under qemu:
/// 1.5e-6 on aarch64 and 9.5e-7 on armv7 (`cargo test -p fer-golden --target T -- --nocapture`).
/// 1e-4 leaves a 70x margin; a real change of weights, preprocessing or kernel moves logits by
/// 1e-2 or more.
pub const F32_TOLERANCE: f32 = 1e-4;

/// Largest |Δ| allowed on an int8 model output. The integer convolutions are exact on every
/// target; only the float tail (pooling, attention, linear head) differs, measured at 1.7e-6 on
/// aarch64 and 8.4e-7 on armv7. The bound is looser than f32's for kernels not exercised here
/// (the Pi 5's SDOT path): an i32 → i8 requantization tie rounded the other way moves an
/// activation by one quantization step. 2e-3 is still far below what a real change does.
pub const INT8_TOLERANCE: f32 = 2e-3;

/// The golden vectors.
pub fn golden() -> Result<GoldenSet> {
    serde_json::from_slice(GOLDEN).context("parsing the golden vectors")
}

/// A model loaded into tract: its contract and an optimized plan for one face.
pub struct Model {
    /// What the model says about itself.
    pub info: ModelInfo,
    plan: std::sync::Arc<TypedRunnableModel>,
}

impl Model {
    /// Loads an ONNX model, checks its contract, and builds the plan the device would run.
    pub fn load(bytes: &[u8]) -> Result<Self> {
        let model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .context("loading the ONNX model")?;
        let mut props = BTreeMap::new();
        for (key, value) in &model.properties {
            if let Some(key) = key.strip_prefix("onnx.metadata_props.") {
                props.insert(
                    key.to_string(),
                    value.try_as_plain_ram()?.to_scalar::<String>()?.clone(),
                );
            }
        }
        let info = contract::check(&props)?;
        let plan = model
            .with_input_fact(0, f32::fact([1, INPUT.channels, INPUT.height, INPUT.width]).into())?
            .into_optimized()?
            .into_runnable()?;
        Ok(Self { info, plan })
    }

    /// The three outputs for one preprocessed face.
    pub fn run(&self, input: &[f32]) -> Result<GoldenOutputs> {
        let tensor =
            tract_ndarray::Array4::from_shape_vec((1, INPUT.channels, INPUT.height, INPUT.width), input.to_vec())?;
        let outputs = self.plan.run(tvec!(Tensor::from(tensor).into()))?;
        let values =
            |i: usize| -> Result<Vec<f32>> { Ok(outputs[i].to_plain_array_view::<f32>()?.iter().copied().collect()) };
        Ok(GoldenOutputs {
            logits: values(0)?,
            embedding: values(1)?,
            center_distances: values(2)?,
        })
    }
}

/// Preprocesses a golden crop with the shared preprocessing.
pub fn preprocess(case: &GoldenCase) -> Result<Vec<f32>> {
    let mut input = vec![0.0; INPUT.len()];
    fer_protocol::preprocess(&INPUT, &case.crop, case.width, case.height, &mut input)
        .map_err(|e| anyhow::anyhow!("{}: {e:?}", case.name))?;
    Ok(input)
}

/// Index of the largest value.
pub fn top1(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
        .0
}

/// Largest |Δ| between two sets of outputs (distances relative to their size, as in [`compare`]).
pub fn max_deviation(got: &GoldenOutputs, expected: &GoldenOutputs) -> f32 {
    let absolute = got
        .logits
        .iter()
        .zip(&expected.logits)
        .chain(got.embedding.iter().zip(&expected.embedding));
    let relative = got.center_distances.iter().zip(&expected.center_distances);
    absolute
        .map(|(a, b)| (a - b).abs())
        .chain(relative.map(|(a, b)| (a - b).abs() / b.abs().max(1.0)))
        .fold(0.0, f32::max)
}

/// Checks outputs against the expected ones: every value within `tolerance` (distances relative
/// to their size, as they grow with the embedding's norm) and the same top-1 expression.
pub fn compare(case: &str, got: &GoldenOutputs, expected: &GoldenOutputs, tolerance: f32) -> Result<()> {
    for (name, a, b, relative) in [
        ("logits", &got.logits, &expected.logits, false),
        ("embedding", &got.embedding, &expected.embedding, false),
        (
            "center_distances",
            &got.center_distances,
            &expected.center_distances,
            true,
        ),
    ] {
        ensure!(
            a.len() == b.len(),
            "{case}: {name} has {} values, expected {}",
            a.len(),
            b.len()
        );
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let scale = if relative { y.abs().max(1.0) } else { 1.0 };
            if (x - y).abs() > tolerance * scale {
                bail!("{case}: {name}[{i}] is {x}, expected {y} (tolerance {tolerance})");
            }
        }
    }
    ensure!(
        top1(&got.logits) == top1(&expected.logits),
        "{case}: top-1 expression changed from {} to {}",
        top1(&expected.logits),
        top1(&got.logits)
    );
    Ok(())
}
