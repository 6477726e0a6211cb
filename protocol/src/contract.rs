//! The model contract: what an exported classifier promises in its ONNX `metadata_props`, so the
//! device can refuse a model that would silently compute something else.
//!
//! fer-export writes [`required_props`] plus the informational keys; the firmware and the golden
//! tests call [`check`]. Both sides derive the expected values from this crate's constants, so a
//! change to the labels or the input spec makes old models fail loudly instead of mislabelling.

use alloc::collections::BTreeMap;
use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use core::fmt;

use crate::{Expression, INPUT};

/// Version of this contract. Bump it when a key's meaning changes.
pub const CONTRACT_VERSION: &str = "1";

/// Name of the model's only input, `[N, C, H, W]` f32 as [`INPUT`] describes.
pub const INPUT_NAME: &str = "input";
/// Output: class scores `[N, 7]` in [`Expression`] order.
pub const OUTPUT_LOGITS: &str = "logits";
/// Output: the embedding `[N, D]` the triplet-center loss shaped.
pub const OUTPUT_EMBEDDING: &str = "embedding";
/// Output: squared Euclidean distance of the embedding to each class center, `[N, 7]`.
pub const OUTPUT_CENTER_DISTANCES: &str = "center_distances";
/// All outputs, in graph order.
pub const OUTPUTS: [&str; 3] = [OUTPUT_LOGITS, OUTPUT_EMBEDDING, OUTPUT_CENTER_DISTANCES];

/// The `metadata_props` keys.
pub mod keys {
    /// [`super::CONTRACT_VERSION`] the model was written for.
    pub const CONTRACT: &str = "fer.contract";
    /// Comma-separated label names in output order.
    pub const LABELS: &str = "fer.labels";
    /// Input name, layout and shape, e.g. `input NCHW 1x48x48`.
    pub const INPUT: &str = "fer.input";
    /// How an 8-bit pixel becomes an input value, e.g. `(p/255-0.5)/0.5`.
    pub const NORMALISATION: &str = "fer.normalisation";
    /// Comma-separated output names in graph order.
    pub const OUTPUTS: &str = "fer.outputs";
    /// `f32` or `int8` (what the convolutions compute in).
    pub const PRECISION: &str = "fer.precision";
    /// Free-form model version, e.g. the run name and epoch.
    pub const MODEL_VERSION: &str = "fer.model_version";
    /// SHA-256 (hex) of the f32 weights in graph order, identical for a model's f32 and int8 files.
    pub const WEIGHTS_SHA256: &str = "fer.weights_sha256";
    /// One-line summary of the training configuration.
    pub const TRAINING: &str = "fer.training";
    /// One-line summary of the checkpoint's evaluation numbers.
    pub const EVALUATION: &str = "fer.evaluation";
}

/// What a model's convolutions compute in: its [`keys::PRECISION`] value and its file's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    /// 32-bit floats throughout.
    F32,
    /// 8-bit integer convolutions with a float tail.
    Int8,
}

impl Precision {
    /// Both precisions, in the order fer-export writes them.
    pub const ALL: [Self; 2] = [Self::F32, Self::Int8];

    /// The [`keys::PRECISION`] value: `f32` or `int8`.
    pub const fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Int8 => "int8",
        }
    }

    /// File name of this precision's model next to its siblings (`NAME.f32.onnx`,
    /// `NAME.int8.onnx`), as [`crate::golden::FILE_SUFFIX`] names the golden vectors.
    pub const fn file_suffix(self) -> &'static str {
        match self {
            Self::F32 => "f32.onnx",
            Self::Int8 => "int8.onnx",
        }
    }

    /// The precision a [`keys::PRECISION`] value names.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The key-value pairs whose values the contract fixes.
pub fn required_props() -> Vec<(&'static str, String)> {
    let labels: Vec<&str> = Expression::ALL.iter().map(|e| e.name()).collect();
    alloc::vec![
        (keys::CONTRACT, CONTRACT_VERSION.to_string()),
        (keys::LABELS, labels.join(",")),
        (
            keys::INPUT,
            format!("{INPUT_NAME} NCHW {}x{}x{}", INPUT.channels, INPUT.height, INPUT.width),
        ),
        (keys::NORMALISATION, format!("(p/255-{})/{}", INPUT.mean, INPUT.std)),
        (keys::OUTPUTS, OUTPUTS.join(",")),
    ]
}

/// What a model that passed [`check`] says about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelInfo {
    /// What the convolutions compute in.
    pub precision: Precision,
    /// The model version string.
    pub version: String,
    /// SHA-256 of the f32 weights.
    pub weights_sha256: String,
    /// Training summary (empty when absent).
    pub training: String,
    /// Evaluation summary (empty when absent).
    pub evaluation: String,
}

/// Why a model breaks the contract.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ContractError {
    /// A key the contract needs is absent: the file was not written by fer-export.
    Missing(&'static str),
    /// A key holds a value this build does not understand.
    Mismatch {
        /// The key.
        key: &'static str,
        /// What this build expects.
        expected: String,
        /// What the model says.
        found: String,
    },
}

impl fmt::Display for ContractError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(key) => write!(
                f,
                "model metadata lacks `{key}`: it was not exported by fer-export (contract {CONTRACT_VERSION})"
            ),
            Self::Mismatch { key, expected, found } => write!(
                f,
                "model metadata `{key}` is `{found}` but this build expects `{expected}`: \
                 re-export the model with a matching fer-export"
            ),
        }
    }
}

impl core::error::Error for ContractError {}

/// Checks a model's metadata against this build's contract.
pub fn check(props: &BTreeMap<String, String>) -> Result<ModelInfo, ContractError> {
    let get = |key: &'static str| props.get(key).ok_or(ContractError::Missing(key));
    for (key, expected) in required_props() {
        let found = get(key)?;
        if *found != expected {
            return Err(ContractError::Mismatch {
                key,
                expected,
                found: found.clone(),
            });
        }
    }
    let found = get(keys::PRECISION)?;
    let precision = Precision::from_name(found).ok_or_else(|| ContractError::Mismatch {
        key: keys::PRECISION,
        expected: format!("{} or {}", Precision::F32, Precision::Int8),
        found: found.clone(),
    })?;
    let optional = |key| props.get(key).cloned().unwrap_or_default();
    Ok(ModelInfo {
        precision,
        version: get(keys::MODEL_VERSION)?.clone(),
        weights_sha256: get(keys::WEIGHTS_SHA256)?.clone(),
        training: optional(keys::TRAINING),
        evaluation: optional(keys::EVALUATION),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> BTreeMap<String, String> {
        let mut props: BTreeMap<String, String> =
            required_props().into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        for (key, value) in [
            (keys::PRECISION, Precision::Int8.name()),
            (keys::MODEL_VERSION, "run 6"),
            (keys::WEIGHTS_SHA256, "ab"),
        ] {
            props.insert(key.to_string(), value.to_string());
        }
        props
    }

    #[test]
    fn required_values_spell_out_the_constants() {
        let props: BTreeMap<_, _> = required_props().into_iter().collect();
        assert_eq!(
            props[keys::LABELS],
            "surprise,fear,disgust,happiness,sadness,anger,neutral"
        );
        assert_eq!(props[keys::INPUT], "input NCHW 1x48x48");
        assert_eq!(props[keys::NORMALISATION], "(p/255-0.5)/0.5");
        assert_eq!(props[keys::OUTPUTS], "logits,embedding,center_distances");
    }

    #[test]
    fn accepts_a_conforming_model_and_names_what_breaks_it() {
        let info = check(&valid()).unwrap();
        assert_eq!((info.precision, info.version.as_str()), (Precision::Int8, "run 6"));
        assert_eq!(info.training, "");

        let mut props = valid();
        props.remove(keys::LABELS);
        assert_eq!(check(&props), Err(ContractError::Missing(keys::LABELS)));

        let mut props = valid();
        props.insert(keys::LABELS.to_string(), "happy,sad".to_string());
        let error = check(&props).unwrap_err();
        assert!(error.to_string().contains("fer.labels` is `happy,sad`"), "{error}");

        let mut props = valid();
        props.insert(keys::PRECISION.to_string(), "fp16".to_string());
        let error = check(&props).unwrap_err();
        assert!(
            matches!(
                error,
                ContractError::Mismatch {
                    key: keys::PRECISION,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("is `fp16` but this build expects `f32 or int8`"),
            "{error}"
        );
    }

    #[test]
    fn precisions_read_back_from_their_names_and_name_their_files() {
        for precision in Precision::ALL {
            assert_eq!(Precision::from_name(precision.name()), Some(precision));
            assert_eq!(precision.file_suffix(), format!("{precision}.onnx"));
        }
        assert_eq!(Precision::from_name("F32"), None);
    }
}
