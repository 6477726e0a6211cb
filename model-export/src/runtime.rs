//! Running exported models in tract, the engine the device uses.

use anyhow::{Context, Result, ensure};
use fer_protocol::INPUT;
use fer_protocol::golden::GoldenOutputs;
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

use crate::graph;

/// An optimized tract plan for one face at a time (batch 1, fixed shape), as on the device.
pub struct Runner {
    plan: std::sync::Arc<TypedRunnableModel>,
}

/// Index of the largest value (the first on ties).
pub fn argmax(values: &[f32]) -> usize {
    values
        .iter()
        .enumerate()
        .fold(
            (0, f32::NEG_INFINITY),
            |best, (i, &v)| if v > best.1 { (i, v) } else { best },
        )
        .0
}

impl Runner {
    /// Builds the optimized plan of a model.
    pub fn new(model: &ModelProto) -> Result<Self> {
        Ok(Self {
            plan: typed_model(model)?.into_optimized()?.into_runnable()?,
        })
    }

    /// Runs one preprocessed face (`INPUT.len()` values).
    pub fn run(&self, input: &[f32]) -> Result<GoldenOutputs> {
        let outputs = self.plan.run(tvec!(input_tensor(input)?.into()))?;
        ensure!(outputs.len() == 3, "model has {} outputs, expected 3", outputs.len());
        let values = |i: usize| -> Result<Vec<f32>> {
            Ok(outputs[i]
                .cast_to::<f32>()?
                .to_plain_array_view::<f32>()?
                .iter()
                .copied()
                .collect())
        };
        Ok(GoldenOutputs {
            logits: values(0)?,
            embedding: values(1)?,
            center_distances: values(2)?,
        })
    }

    /// Names of the operators in the optimized plan with how often each occurs, to show which
    /// kernels tract picked (e.g. whether the int8 convs stayed integer).
    pub fn op_census(&self) -> Vec<(String, usize)> {
        let mut counts = std::collections::BTreeMap::new();
        for node in self.plan.model().nodes() {
            *counts.entry(node.op().name().to_string()).or_insert(0) += 1;
        }
        counts.into_iter().collect()
    }
}

/// One preprocessed face (`INPUT.len()` values) as the model's `[1, C, H, W]` input tensor.
pub fn input_tensor(input: &[f32]) -> Result<Tensor> {
    ensure!(
        input.len() == INPUT.len(),
        "input has {} values, expected {}",
        input.len(),
        INPUT.len()
    );
    let shape = (1, INPUT.channels, INPUT.height, INPUT.width);
    Ok(tract_ndarray::Array4::from_shape_vec(shape, input.to_vec())?.into())
}

/// The model as a typed tract graph with the input fixed to one face.
pub fn typed_model(model: &ModelProto) -> Result<TypedModel> {
    let bytes = graph::encode(model);
    tract_onnx::onnx()
        .model_for_read(&mut bytes.as_slice())
        .context("tract cannot load the ONNX model")?
        .with_input_fact(0, f32::fact([1, INPUT.channels, INPUT.height, INPUT.width]).into())?
        .into_typed()
        .context("tract cannot type the ONNX model")
}
