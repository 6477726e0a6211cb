//! Expression classification with tract: a contract-checked model, one optimized plan built at
//! start-up, run on one preprocessed face at a time.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use fer_protocol::contract::{self, ModelInfo};
use fer_protocol::golden::GoldenOutputs;
use fer_protocol::{Expression, INPUT};
use tract_onnx::prelude::*;

/// What tract's ONNX loader calls a model's `metadata_props` entries.
const METADATA_PREFIX: &str = "onnx.metadata_props.";

/// A classifier loaded into tract: its contract and an optimized plan for one face.
pub struct Classifier {
    /// What the model says about itself.
    pub info: ModelInfo,
    plan: std::sync::Arc<TypedRunnableModel>,
    /// The input tensor, reused for every face so the hot path does not allocate it.
    input: Tensor,
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

    /// Loads an ONNX model, checks that it follows the [`contract`], and builds its plan.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let model = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .context("loading the ONNX model")?;
        let mut props = BTreeMap::new();
        for (key, value) in &model.properties {
            if let Some(key) = key.strip_prefix(METADATA_PREFIX) {
                props.insert(
                    key.to_string(),
                    value.try_as_plain_ram()?.to_scalar::<String>()?.clone(),
                );
            }
        }
        let info = contract::check(&props).context("the model breaks the fer contract")?;
        let shape = [1, INPUT.channels, INPUT.height, INPUT.width];
        let model = model
            .with_input_fact(0, f32::fact(shape).into())?
            .into_optimized()
            .context("optimizing the classifier")?;
        check_outputs(&model).context("the model breaks the fer contract")?;
        let plan = model.into_runnable()?;
        Ok(Self {
            info,
            plan,
            input: Tensor::zero::<f32>(&shape)?,
        })
    }

    /// Runs the plan on one preprocessed face ([`INPUT`]`.len()` values).
    fn run(&mut self, input: &[f32]) -> Result<TVec<TValue>> {
        anyhow::ensure!(
            input.len() == INPUT.len(),
            "input has {} values, expected {}",
            input.len(),
            INPUT.len()
        );
        self.input
            .try_as_plain_ram_mut()?
            .as_slice_mut::<f32>()?
            .copy_from_slice(input);
        self.plan.run(tvec!(self.input.clone().into()))
    }

    /// The three raw outputs for one preprocessed face ([`INPUT`]`.len()` values).
    pub fn outputs(&mut self, input: &[f32]) -> Result<GoldenOutputs> {
        let outputs = self.run(input)?;
        let values = |i: usize| -> Result<Vec<f32>> { Ok(outputs[i].try_as_plain_ram()?.as_slice::<f32>()?.to_vec()) };
        Ok(GoldenOutputs {
            logits: values(0)?,
            embedding: values(1)?,
            center_distances: values(2)?,
        })
    }

    /// Classifies one preprocessed face, reading the outputs in place (no copies per face).
    pub fn classify(&mut self, input: &[f32]) -> Result<Classification> {
        let outputs = self.run(input)?;
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

    /// The names of the ops in the optimized plan, with the matrix-multiply kernels tract chose.
    pub fn plan_ops(&self) -> Vec<String> {
        self.plan
            .model()
            .nodes()
            .iter()
            .map(|n| format!("{} {}", n.op().name(), n.op().info().unwrap_or_default().join(" ")))
            .collect()
    }
}

/// Preprocesses an 8-bit grayscale crop (row-major) into the model input with the shared
/// preprocessing, as an error value instead of the `no_std` error type.
pub fn preprocess(pixels: &[u8], width: usize, height: usize, input: &mut [f32]) -> Result<()> {
    fer_protocol::preprocess(&INPUT, pixels, width, height, input)
        .map_err(|e| anyhow::anyhow!("preprocessing a {width}x{height} crop: {e}"))
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |b, (i, &v)| if v > b.1 { (i, v) } else { b })
        .0
}

/// Numerically stable softmax of `logits` into `out`.
pub fn softmax(logits: &[f32], out: &mut [f32]) {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = (l - max).exp();
        sum += *o;
    }
    out.iter_mut().for_each(|o| *o /= sum);
}

/// The graph's outputs as the contract names them: logits `[1, 7]`, an embedding `[1, D]` and
/// center distances `[1, 7]`. The metadata alone does not say what the graph computes.
fn check_outputs(model: &TypedModel) -> Result<()> {
    let outlets = model.output_outlets()?;
    let names: Vec<&str> = outlets
        .iter()
        .map(|&o| model.outlet_label(o).unwrap_or(&model.node(o.node).name))
        .collect();
    anyhow::ensure!(
        names == contract::OUTPUTS,
        "its outputs are {names:?}, the contract names {:?}",
        contract::OUTPUTS
    );
    for (&outlet, (name, classes)) in
        outlets.iter().zip(
            contract::OUTPUTS
                .iter()
                .zip([Some(Expression::COUNT), None, Some(Expression::COUNT)]),
        )
    {
        let shape = model.outlet_fact(outlet)?.shape.as_concrete().map(|s| s.to_vec());
        let fits = match &shape {
            Some(dims) => dims.len() == 2 && dims[0] == 1 && classes.is_none_or(|k| dims[1] == k),
            None => false,
        };
        anyhow::ensure!(
            fits,
            "output `{name}` has shape {shape:?}, expected [1, {}]",
            classes.map_or("D".to_string(), |k| k.to_string())
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_whose_outputs_break_the_contract_is_refused_at_load() {
        use prost::Message;
        let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/../models/fer.f32.onnx")).unwrap();
        assert!(Classifier::from_bytes(&bytes).is_ok());
        let refused = |change: &dyn Fn(&mut tract_onnx::pb::GraphProto)| {
            let mut model = tract_onnx::pb::ModelProto::decode(&bytes[..]).unwrap();
            change(model.graph.as_mut().unwrap());
            let error = Classifier::from_bytes(&model.encode_to_vec()).err().expect("refused");
            format!("{error:#}")
        };
        // Two outputs, not three: classifying would read past the end.
        let error = refused(&|g| {
            g.output.pop();
        });
        assert!(error.contains("its outputs are"), "{error}");
        // The right outputs in the wrong order: distances would be read as the embedding.
        let error = refused(&|g| g.output.swap(1, 2));
        assert!(error.contains("its outputs are"), "{error}");
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let mut p = [0.0; 3];
        softmax(&[1000.0, 1001.0, 999.0], &mut p);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert_eq!(argmax(&p), 1);
        assert!(p[0] > p[2]);
    }
}
