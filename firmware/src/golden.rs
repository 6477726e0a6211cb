//! Checks model outputs against golden vectors, with the tolerances the golden tests and
//! `fer-sensor selftest` share.

use anyhow::{Context, Result, bail, ensure};
use fer_protocol::INPUT;
use fer_protocol::contract::Precision;
use fer_protocol::golden::{GoldenCase, GoldenSet, ModelOutputs};
use fer_protocol::scores::argmax;

use crate::classify::Classifier;

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

/// The largest |Δ| allowed on a model output of this precision.
pub fn tolerance(precision: Precision) -> f32 {
    match precision {
        Precision::F32 => F32_TOLERANCE,
        Precision::Int8 => INT8_TOLERANCE,
    }
}

/// A case's expected outputs for a model of this precision.
pub fn expected(precision: Precision, case: &GoldenCase) -> &ModelOutputs {
    match precision {
        Precision::F32 => &case.f32,
        Precision::Int8 => &case.int8,
    }
}

/// Parses golden vectors.
pub fn parse(bytes: &[u8]) -> Result<GoldenSet> {
    serde_json::from_slice(bytes).context("parsing the golden vectors")
}

/// Preprocesses a golden crop with the shared preprocessing.
pub fn preprocess(case: &GoldenCase) -> Result<Vec<f32>> {
    let mut input = vec![0.0; INPUT.len()];
    crate::classify::preprocess(&case.crop, case.width, case.height, &mut input).with_context(|| case.name.clone())?;
    Ok(input)
}

/// Checks that the golden vectors were made for this model's weights.
pub fn check_matches(set: &GoldenSet, classifier: &Classifier) -> Result<()> {
    ensure!(
        set.weights_sha256 == classifier.info.weights_sha256 && set.model_version == classifier.info.version,
        "the golden vectors are for model {} ({}), the classifier is {} ({})",
        set.model_version,
        set.weights_sha256,
        classifier.info.version,
        classifier.info.weights_sha256
    );
    Ok(())
}

/// Runs every golden case through the classifier: preprocessing bit-exact, outputs within the
/// precision's tolerance, same top-1. Returns the largest deviation seen.
pub fn check_all(set: &GoldenSet, classifier: &mut Classifier) -> Result<f32> {
    check_matches(set, classifier)?;
    let precision = classifier.info.precision;
    let mut worst: f32 = 0.0;
    for case in &set.cases {
        let input = preprocess(case)?;
        ensure!(
            input == case.input,
            "{}: preprocessing differs from the golden tensor",
            case.name
        );
        let got = classifier.outputs(&input)?;
        let expected = expected(precision, case);
        compare(&case.name, &got, expected, tolerance(precision))?;
        worst = worst.max(max_deviation(&got, expected));
    }
    Ok(worst)
}

/// Largest |Δ| between two sets of outputs (distances relative to their size, as in [`compare`]).
pub fn max_deviation(got: &ModelOutputs, expected: &ModelOutputs) -> f32 {
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
pub fn compare(case: &str, got: &ModelOutputs, expected: &ModelOutputs, tolerance: f32) -> Result<()> {
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
    let (got_top, expected_top) = (argmax(&got.logits), argmax(&expected.logits));
    ensure!(
        got_top == expected_top,
        "{case}: top-1 expression changed from {expected_top} to {got_top}"
    );
    Ok(())
}
