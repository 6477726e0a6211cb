//! Expression classification: a contract-checked model in [`fer_runtime`]'s plan, run on one
//! preprocessed face at a time, its logits turned into probabilities.

use std::path::Path;

use anyhow::{Context, Result};
use fer_protocol::contract::ModelInfo;
use fer_protocol::golden::ModelOutputs;
use fer_protocol::scores::{argmax, softmax};
use fer_protocol::{Expression, INPUT};

/// Classifier settings (`[classify]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClassifyOptions {
    /// Also classify the face mirrored left-right and average the two readings (test-time flip
    /// averaging): more accurate, at twice the classifier's time per face.
    pub flip: bool,
}

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

    /// Squared distance to the nearest class center (the model gives squared distances).
    pub fn nearest_center_sq(&self) -> f32 {
        self.center_distances.iter().copied().fold(f32::INFINITY, f32::min)
    }
}

impl Classifier {
    /// Loads an ONNX model file; see [`Classifier::from_bytes`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = crate::read_file(path, crate::MAX_MODEL_BYTES)
            .with_context(|| format!("reading the classifier {}", path.display()))?;
        Self::from_bytes(&bytes).with_context(|| format!("classifier {}", path.display()))
    }

    /// Loads an ONNX model, checks that it follows the fer contract (metadata and outputs), and
    /// builds its plan.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let (plan, info) = fer_runtime::Plan::with_contract(bytes)?;
        Ok(Self { info, plan })
    }

    /// The three raw outputs for one preprocessed face ([`INPUT`]`.len()` values).
    pub fn outputs(&mut self, input: &[f32]) -> Result<ModelOutputs> {
        self.plan.outputs(input)
    }

    /// Classifies one preprocessed face.
    pub fn classify(&mut self, input: &[f32]) -> Result<Classification> {
        let (logits, center_distances) = self.scores(input)?;
        let mut probabilities = [0.0; Expression::COUNT];
        softmax(&logits, &mut probabilities);
        Ok(Classification {
            probabilities,
            center_distances,
        })
    }

    /// Classifies one preprocessed face as [`Self::classify`] does; with `flip`, averaged with
    /// its mirror image (`input` is left mirrored).
    pub fn classify_face(&mut self, input: &mut [f32], flip: bool) -> Result<Classification> {
        if !flip {
            return self.classify(input);
        }
        let (logits, distances) = self.scores(input)?;
        INPUT.mirror(input);
        let (mirrored, mirrored_distances) = self.scores(input)?;
        let mut class = Classification {
            probabilities: [0.0; Expression::COUNT],
            center_distances: [0.0; Expression::COUNT],
        };
        fer_protocol::scores::flip_averaged(&logits, &mirrored, &mut class.probabilities);
        for ((d, a), b) in class.center_distances.iter_mut().zip(distances).zip(mirrored_distances) {
            *d = (a + b) / 2.0;
        }
        Ok(class)
    }

    /// The logits and center distances of one preprocessed face, read from the plan's outputs
    /// in place.
    fn scores(&mut self, input: &[f32]) -> Result<([f32; Expression::COUNT], [f32; Expression::COUNT])> {
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
        let mut scores = ([0.0; Expression::COUNT], [0.0; Expression::COUNT]);
        scores.0.copy_from_slice(logits);
        scores.1.copy_from_slice(distances);
        Ok(scores)
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
