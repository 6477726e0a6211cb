//! Cross-layer equalization of depthwise → pointwise conv pairs before int8 quantization
//! (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction",
//! ICCV 2019), with the depthwise outputs' channel ranges measured on the calibration images.
//!
//! A depthwise conv has no BatchNorm of its own in model v2's blocks, so its output channels
//! span very different ranges, and one per-tensor int8 scale crushes the narrow ones. Nothing
//! non-linear sits between it and the 1x1 conv that reads it, so scaling output channel c of the
//! depthwise conv by s_c and input channel c of the 1x1 conv by 1/s_c leaves the f32 function
//! unchanged. With s_c = sqrt(w_c / a_c) (a_c: the channel's largest |activation|, w_c: the
//! largest |weight| reading it) both become sqrt(a_c · w_c): the activation ranges and the
//! weight columns are balanced against each other. Only the model that is quantized is
//! equalized; the f32 model ships as exported.

use anyhow::{Context, Result};
use tract_onnx::pb::{GraphProto, ModelProto, NodeProto};
use tract_onnx::prelude::*;

use crate::graph;

/// A depthwise conv and the 1x1 conv that is its only reader, by node index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pair {
    /// The depthwise conv (group = channels, one input channel per group).
    pub depthwise: usize,
    /// The pointwise conv (1x1 kernel, group 1).
    pub pointwise: usize,
}

fn group(node: &NodeProto) -> i64 {
    node.attribute.iter().find(|a| a.name == "group").map_or(1, |a| a.i)
}

fn weight_dims(g: &GraphProto, node: &NodeProto) -> Option<Vec<usize>> {
    graph::initializer(g, node.input.get(1)?).map(graph::dims)
}

/// Every depthwise → pointwise pair whose depthwise output nothing else reads.
pub fn pairs(g: &GraphProto) -> Vec<Pair> {
    let readers = graph::consumers(g);
    let mut out = Vec::new();
    for (i, node) in g.node.iter().enumerate() {
        let Some(dims) = weight_dims(g, node).filter(|_| node.op_type == "Conv") else {
            continue;
        };
        let depthwise = dims.len() == 4 && dims[1] == 1 && group(node) == dims[0] as i64 && dims[0] > 1;
        if !depthwise || graph::is_graph_output(g, &node.output[0]) {
            continue;
        }
        if let Some(&[j]) = readers.get(&node.output[0]).map(Vec::as_slice) {
            let next = &g.node[j];
            let pointwise = next.op_type == "Conv"
                && group(next) == 1
                && weight_dims(g, next).is_some_and(|d| d.len() == 4 && d[1] == dims[0] && d[2] == 1 && d[3] == 1);
            if pointwise {
                out.push(Pair {
                    depthwise: i,
                    pointwise: j,
                });
            }
        }
    }
    out
}

/// The per-channel scales s_c = sqrt(w_c / a_c); 1 where a channel is silent or unread.
pub fn scales(activation: &[f32], weight: &[f32]) -> Vec<f32> {
    activation
        .iter()
        .zip(weight)
        .map(|(&a, &w)| if a > 0.0 && w > 0.0 { (w / a).sqrt() } else { 1.0 })
        .collect()
}

/// A copy of `model` with every depthwise → pointwise pair equalized on `inputs`, and how many
/// pairs there were.
pub fn equalize(model: &ModelProto, inputs: &[Vec<f32>]) -> Result<(ModelProto, usize)> {
    let mut model = model.clone();
    let g = graph::graph_mut(&mut model)?;
    let pairs = pairs(g);
    if pairs.is_empty() {
        return Ok((model, 0));
    }
    let tensors: Vec<String> = pairs.iter().map(|p| g.node[p.depthwise].output[0].clone()).collect();
    // Largest |value| per channel of each depthwise output, over every image.
    let mut ranges: Vec<Vec<f32>> = Vec::new();
    crate::calibrate::for_each_run(&model, &tensors, inputs, "equalizing", |outputs| {
        for (k, value) in outputs.iter().enumerate() {
            let view = value.to_plain_array_view::<f32>()?;
            let channels = view.shape()[1];
            if ranges.len() <= k {
                ranges.push(vec![0.0; channels]);
            }
            for (c, plane) in view.axis_iter(tract_ndarray::Axis(1)).enumerate() {
                ranges[k][c] = plane.iter().fold(ranges[k][c], |m, v| m.max(v.abs()));
            }
        }
        Ok(())
    })?;
    let g = graph::graph_mut(&mut model)?;
    for (pair, activation) in pairs.iter().zip(&ranges) {
        let (dw, pw) = (g.node[pair.depthwise].clone(), g.node[pair.pointwise].clone());
        let pw_weight = graph::initializer(g, &pw.input[1]).context("pointwise weight")?;
        let (pw_dims, mut pw_w) = (graph::dims(pw_weight), graph::f32_values(pw_weight)?);
        let channels = pw_dims[1];
        let mut column = vec![0.0f32; channels];
        for (k, v) in pw_w.iter().enumerate() {
            column[k % channels] = column[k % channels].max(v.abs());
        }
        let s = scales(activation, &column);
        for (k, v) in pw_w.iter_mut().enumerate() {
            *v /= s[k % channels];
        }
        replace(g, &pw.input[1], &pw_dims, &pw_w)?;
        let dw_weight = graph::initializer(g, &dw.input[1]).context("depthwise weight")?;
        let (dw_dims, mut dw_w) = (graph::dims(dw_weight), graph::f32_values(dw_weight)?);
        let per_channel = dw_w.len() / channels;
        for (k, v) in dw_w.iter_mut().enumerate() {
            *v *= s[k / per_channel];
        }
        replace(g, &dw.input[1], &dw_dims, &dw_w)?;
        if let Some(bias) = dw.input.get(2).filter(|b| !b.is_empty()) {
            let b = graph::initializer(g, bias).context("depthwise bias")?;
            let (dims, mut values) = (graph::dims(b), graph::f32_values(b)?);
            for (v, s) in values.iter_mut().zip(&s) {
                *v *= s;
            }
            replace(g, bias, &dims, &values)?;
        }
    }
    Ok((model, pairs.len()))
}

/// Swaps an initializer's values, keeping its name and shape.
fn replace(g: &mut GraphProto, name: &str, dims: &[usize], values: &[f32]) -> Result<()> {
    let slot = g
        .initializer
        .iter_mut()
        .find(|t| t.name == name)
        .with_context(|| format!("initializer {name}"))?;
    *slot = graph::f32_tensor(name, dims, values);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scales_balance_activation_and_weight_ranges() {
        let s = scales(&[4.0, 0.25, 0.0], &[1.0, 1.0, 2.0]);
        assert_eq!(s, [0.5, 2.0, 1.0]);
        // Both ranges become sqrt(a·w): 4·0.5 = 1/0.5 = 2, 0.25·2 = 1/2 = 0.5.
        assert_eq!((4.0 * s[0], 1.0 / s[0], 0.25 * s[1], 1.0 / s[1]), (2.0, 2.0, 0.5, 0.5));
    }
}
