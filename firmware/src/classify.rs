//! Expression classification: a contract-checked model in [`fer_runtime`]'s plan, run on one
//! preprocessed face at a time, its logits turned into probabilities.

use std::path::Path;

use anyhow::{Context, Result};
use fer_protocol::contract::ModelInfo;
use fer_protocol::golden::GoldenOutputs;
use fer_protocol::scores::{argmax, softmax};
use fer_protocol::{Expression, INPUT};

/// A classifier loaded into tract: its contract and an optimized plan for one face.
pub struct Classifier {
    /// What the model says about itself.
    pub info: ModelInfo,
    plan: fer_runtime::Plan,
}

/// The classifier's verdict on one face.
#[derive(Clone, Debug, PartialEq)]
pub struct Classification {
    /// Softmax of the logits, in [`Expression`] order.
    pub probabilities: [f32; Expression::COUNT],
    /// Squared distance of the embedding to each class center.
    pub center_distances: [f32; Expression::COUNT],
}

impl Classification {
    /// The most probable expression and its probability.
    pub fn top(&self) -> (Expression, f32) {
        let i = argmax(&self.probabilities);
        (Expression::ALL[i], self.probabilities[i])
    }

    /// Distance to the nearest class center.
    pub fn nearest_center(&self) -> f32 {
        self.center_distances.iter().copied().fold(f32::INFINITY, f32::min)
    }
}

impl Classifier {
    /// Loads an ONNX model file; see [`Classifier::from_bytes`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("reading the classifier {}", path.display()))?;
        Self::from_bytes(&bytes).with_context(|| format!("classifier {}", path.display()))
    }

    /// Loads an ONNX model, checks that it follows the fer contract (metadata and outputs), and
    /// builds its plan.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (plan, info) = fer_runtime::Plan::with_contract(bytes)?;
        Ok(Self { info, plan })
    }

    /// The three raw outputs for one preprocessed face ([`INPUT`]`.len()` values).
    pub fn outputs(&mut self, input: &[f32]) -> Result<GoldenOutputs> {
        self.plan.outputs(input)
    }

    /// Classifies one preprocessed face, reading the outputs in place (no copies per face).
    pub fn classify(&mut self, input: &[f32]) -> Result<Classification> {
        let outputs = self.plan.run(input)?;
        let logits = outputs[0].try_as_plain_ram()?;
        let distances = outputs[2].try_as_plain_ram()?;
        let (logits, distances) = (logits.as_slice::<f32>()?, distances.as_slice::<f32>()?);
        anyhow::ensure!(
            logits.len() == Expression::COUNT && distances.len() == Expression::COUNT,
            "the model gives {} logits and {} center distances, expected {}",
            logits.len(),
            distances.len(),
            Expression::COUNT
        );
        let mut result = Classification {
            probabilities: [0.0; Expression::COUNT],
            center_distances: [0.0; Expression::COUNT],
        };
        softmax(logits, &mut result.probabilities);
        result.center_distances.copy_from_slice(distances);
        Ok(result)
    }

    /// Where the plan spends its time on one preprocessed face, node by node, over `runs` runs.
    pub fn profile(&mut self, input: &[f32], runs: usize) -> Result<Vec<fer_runtime::NodeTime>> {
        self.plan.profile(input, runs)
    }

    /// The matrix-multiply kernel of every op of the plan that names one, in plan order.
    pub fn kernels(&self) -> Vec<String> {
        self.plan.kernels()
    }
}

/// Preprocesses an 8-bit grayscale crop (row-major) into the model input with the shared
/// preprocessing, as an error value instead of the `no_std` error type.
pub fn preprocess(pixels: &[u8], width: usize, height: usize, input: &mut [f32]) -> Result<()> {
    fer_protocol::preprocess(&INPUT, pixels, width, height, input)
        .map_err(|e| anyhow::anyhow!("preprocessing a {width}x{height} crop: {e}"))
}
