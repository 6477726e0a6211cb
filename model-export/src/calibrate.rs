//! Activation ranges for static quantization, measured by running the f32 model in tract.

use std::collections::HashMap;

use anyhow::{Context, Result, ensure};
use indicatif::{ProgressBar, ProgressStyle};
use tract_onnx::pb::{ModelProto, ValueInfoProto};
use tract_onnx::prelude::*;

use crate::graph;

/// Observed value range of one tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Range {
    /// Smallest value seen.
    pub min: f32,
    /// Largest value seen.
    pub max: f32,
}

/// The tensors whose ranges quantization needs: each conv's input and the tensor that carries its
/// result (the following ReLU's output when the ReLU is fused into it).
pub fn tensors_to_observe(model: &ModelProto) -> Result<Vec<String>> {
    let g = graph::graph(model)?;
    let readers = graph::consumers(g);
    let mut names = Vec::new();
    for node in g.node.iter().filter(|n| n.op_type == "Conv") {
        names.push(node.input[0].clone());
        names.push(fused_relu(g, &readers, &node.output[0]).unwrap_or_else(|| node.output[0].clone()));
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The output of the ReLU that is the only reader of `tensor`, if there is one.
pub fn fused_relu(
    g: &tract_onnx::pb::GraphProto,
    readers: &HashMap<String, Vec<usize>>,
    tensor: &str,
) -> Option<String> {
    if graph::is_graph_output(g, tensor) {
        return None;
    }
    match readers.get(tensor).map(Vec::as_slice) {
        Some(&[j]) if g.node[j].op_type == "Relu" => Some(g.node[j].output[0].clone()),
        _ => None,
    }
}

/// Runs the f32 model on every input (`INPUT.len()` values each) and records the min and max of
/// each named tensor.
pub fn observe(model: &ModelProto, tensors: &[String], inputs: &[Vec<f32>]) -> Result<HashMap<String, Range>> {
    let mut ranges: Vec<Range> = vec![
        Range {
            min: f32::INFINITY,
            max: f32::NEG_INFINITY
        };
        tensors.len()
    ];
    for_each_run(model, tensors, inputs, "calibrating", |outputs| {
        for (range, value) in ranges.iter_mut().zip(outputs) {
            for &v in value.to_plain_array_view::<f32>()? {
                range.min = range.min.min(v);
                range.max = range.max.max(v);
            }
        }
        Ok(())
    })?;
    Ok(tensors.iter().cloned().zip(ranges).collect())
}

/// Runs the f32 model on every input (`INPUT.len()` values each) with `tensors` exposed as its
/// only outputs, handing each run's values, in `tensors` order, to `visit`; `what` labels the
/// progress bar.
pub(crate) fn for_each_run(
    model: &ModelProto,
    tensors: &[String],
    inputs: &[Vec<f32>],
    what: &str,
    mut visit: impl FnMut(&[TValue]) -> Result<()>,
) -> Result<()> {
    ensure!(!inputs.is_empty(), "no calibration inputs");
    let mut probe = model.clone();
    let g = graph::graph_mut(&mut probe)?;
    g.output = tensors
        .iter()
        .map(|name| ValueInfoProto {
            name: name.clone(),
            ..Default::default()
        })
        .collect();
    let plan = crate::runtime::typed_model(&probe)
        .with_context(|| format!("preparing the model for {what}"))?
        .into_optimized()?
        .into_runnable()?;
    let bar = ProgressBar::new(inputs.len() as u64).with_style(
        ProgressStyle::with_template(&format!(
            "{what} {{bar:30}} {{pos}}/{{len}} faces ({{per_sec}}, {{eta}} left)"
        ))
        .expect("valid template"),
    );
    for input in bar.wrap_iter(inputs.iter()) {
        visit(&plan.run(tvec!(crate::runtime::input_tensor(input)?.into()))?)?;
    }
    bar.finish_and_clear();
    Ok(())
}
