//! Golden vectors: face crops with the tensors and model outputs the host computed for them.
//!
//! fer-export writes one file per exported model pair; the golden tests replay it on every target
//! and compare. The format is JSON (serde) so a person can read it and any target can parse it.

use alloc::string::String;
use alloc::vec::Vec;

/// File name of the golden vectors next to the models (`NAME.golden.json`).
pub const FILE_SUFFIX: &str = "golden.json";

/// Every golden case of one exported model pair.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GoldenSet {
    /// The [`crate::contract::CONTRACT_VERSION`] the models follow.
    pub contract: String,
    /// The models' `fer.model_version`.
    pub model_version: String,
    /// The models' `fer.weights_sha256`: golden vectors only hold for those weights.
    pub weights_sha256: String,
    /// The cases.
    pub cases: Vec<GoldenCase>,
}

/// One face crop and what the models make of it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GoldenCase {
    /// Where the crop came from (data set file name, and any resizing applied).
    pub name: String,
    /// Its annotated expression ([`crate::Expression::name`]).
    pub label: String,
    /// Crop width in pixels.
    pub width: usize,
    /// Crop height in pixels.
    pub height: usize,
    /// The raw 8-bit grayscale crop, row-major.
    pub crop: Vec<u8>,
    /// [`crate::preprocess`] of the crop: the model input.
    pub input: Vec<f32>,
    /// Outputs of the f32 model.
    pub f32: ModelOutputs,
    /// Outputs of the int8 model.
    pub int8: ModelOutputs,
}

/// The three model outputs of one face.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelOutputs {
    /// Class scores in [`crate::Expression`] order.
    pub logits: Vec<f32>,
    /// The embedding.
    pub embedding: Vec<f32>,
    /// Squared distances to the class centers.
    pub center_distances: Vec<f32>,
}
