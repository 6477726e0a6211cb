//! f32 ONNX → int8 ONNX: static post-training quantization of every convolution into
//! `QLinearConv`, the form tract runs with integer kernels.
//!
//! Activations are i8 with a zero point (asymmetric, from calibrated ranges; i8 rather than u8
//! because tract's integer kernels are i8×i8 and would otherwise add an offset op per conv),
//! weights i8 with zero point 0 (symmetric), biases i32 at scale `x_scale·w_scale`. A conv
//! followed by a ReLU becomes one `QLinearConv` whose output range starts at 0, so the clamp to
//! the i8 range does the ReLU. Consecutive convs hand their i8 tensors over directly;
//! `DequantizeLinear` appears only where a float
//! operator (pooling, attention, the linear head) reads a conv's result.

use std::collections::HashMap;

use anyhow::{Context, Result, bail};
use tract_onnx::pb::{GraphProto, ModelProto, NodeProto};

use crate::calibrate::{Range, fused_relu};
use crate::graph;

/// How a conv's weights are scaled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum WeightScales {
    /// One scale for the whole kernel: tract runs it as an integer matmul (fastest).
    PerTensor,
    /// One scale per output channel: more precise, but tract falls back to slower kernels.
    PerChannel,
    /// Per-channel only for the convs where per-tensor scales lose too much (see
    /// [`AUTO_MIN_SQNR_DB`]).
    Auto,
}

/// Worst-channel weight signal-to-quantization-noise ratio below which `Auto` picks per-channel
/// scales (30 dB: the rounding noise is about 3 % of the channel's weights).
pub const AUTO_MIN_SQNR_DB: f64 = 30.0;

/// What happened to one conv.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerReport {
    /// The conv's output tensor.
    pub name: String,
    /// Weight SQNR of the worst output channel with one scale per tensor, in dB.
    pub sqnr_per_tensor_db: f64,
    /// Weight SQNR of the worst output channel with one scale per channel, in dB.
    pub sqnr_per_channel_db: f64,
    /// Whether per-channel scales were used.
    pub per_channel: bool,
    /// Whether a ReLU was fused into it.
    pub fused_relu: bool,
}

/// i8 affine parameters of an activation tensor: `value = scale · (q − zero_point)`.
#[derive(Clone, Copy, Debug)]
struct Affine {
    scale: f32,
    zero_point: i8,
}

impl Affine {
    fn of(range: Range) -> Self {
        // The range must hold 0 exactly (padding, ReLU); a degenerate range still needs a scale.
        let (min, max) = (range.min.min(0.0), range.max.max(0.0));
        let scale = ((max - min) / 255.0).max(1e-8);
        let zero_point = (-128.0 - min / scale).round().clamp(-128.0, 127.0) as i8;
        Self { scale, zero_point }
    }
}

/// Symmetric i8 quantization of weights `[out, rest]` with one scale per group of `group` values.
fn quantize_weights(w: &[f32], group: usize) -> (Vec<i8>, Vec<f32>) {
    let mut q = Vec::with_capacity(w.len());
    let mut scales = Vec::new();
    for chunk in w.chunks(group) {
        let max = chunk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let scale = if max == 0.0 { 1.0 } else { max / 127.0 };
        scales.push(scale);
        q.extend(chunk.iter().map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8));
    }
    (q, scales)
}

/// Signal-to-quantization-noise ratio of the worst output channel (`channel` values each) when
/// the weights are quantized in groups of `group` values, in dB. The worst channel is what
/// matters: a channel whose weights round to a few levels is lost whatever the others do.
fn worst_channel_sqnr_db(w: &[f32], channel: usize, group: usize) -> f64 {
    let (q, scales) = quantize_weights(w, group);
    let mut worst = f64::INFINITY;
    for (c, values) in w.chunks(channel).enumerate() {
        let (mut signal, mut noise) = (0.0f64, 0.0f64);
        for (i, &v) in values.iter().enumerate() {
            let index = c * channel + i;
            let back = q[index] as f32 * scales[index / group];
            signal += (v as f64).powi(2);
            noise += ((v - back) as f64).powi(2);
        }
        if noise > 0.0 {
            worst = worst.min(10.0 * (signal / noise).log10());
        }
    }
    worst
}

/// Rewrites every conv of a folded f32 model into `QLinearConv` with the calibrated `ranges`,
/// except the convs whose position in graph order (from 0, as in the report's table) is in
/// `keep_f32`: they stay f32 (mixed precision, and the way to find which conv loses the most).
pub fn quantize(
    model: &ModelProto,
    ranges: &HashMap<String, Range>,
    scales: WeightScales,
    keep_f32: &[usize],
) -> Result<(ModelProto, Vec<LayerReport>)> {
    let mut model = model.clone();
    let g = graph::graph_mut(&mut model)?;
    let readers = graph::consumers(g);
    let old_nodes = std::mem::take(&mut g.node);
    let lookup = GraphProto {
        node: old_nodes.clone(),
        output: g.output.clone(),
        ..Default::default()
    };
    let range_of = |name: &str| {
        ranges
            .get(name)
            .copied()
            .with_context(|| format!("no calibrated range for `{name}`"))
    };
    // Float tensor name → its i8 twin and affine parameters.
    let mut quantized: HashMap<String, (String, Affine)> = HashMap::new();
    let mut skipped_relus = std::collections::HashSet::new();
    let mut new_nodes: Vec<NodeProto> = Vec::new();
    let mut reports = Vec::new();

    // Which nodes become QLinearConv.
    let mut ordinal = 0;
    let quantizes: Vec<bool> = old_nodes
        .iter()
        .map(|node| {
            let conv = node.op_type == "Conv";
            ordinal += usize::from(conv);
            conv && !keep_f32.contains(&(ordinal - 1))
        })
        .collect();
    // A mistyped position would leave the conv meant to stay f32 quantized, without a word.
    if let Some(&beyond) = keep_f32.iter().find(|&&i| i >= ordinal) {
        anyhow::bail!(
            "--f32-convs {beyond}: the model has {ordinal} convs, at positions 0 to {}",
            ordinal.saturating_sub(1)
        );
    }
    for (index, node) in old_nodes.iter().enumerate() {
        if skipped_relus.contains(&index) {
            continue;
        }
        if !quantizes[index] {
            new_nodes.push(node.clone());
            continue;
        }
        let x = &node.input[0];
        let (x_q, x_affine) = match quantized.get(x) {
            Some(found) => found.clone(),
            None => {
                let affine = Affine::of(range_of(x)?);
                let q_name = format!("{x}.i8");
                add_affine(g, x, affine);
                new_nodes.push(graph::node(
                    "QuantizeLinear",
                    &format!("{x}.quantize"),
                    &[x, &format!("{x}.scale"), &format!("{x}.zero_point")],
                    &[&q_name],
                ));
                quantized.insert(x.clone(), (q_name.clone(), affine));
                (q_name, affine)
            }
        };

        let weight = graph::initializer(g, &node.input[1]).context("conv weight is not constant")?;
        let w_dims = graph::dims(weight);
        let w = graph::f32_values(weight)?;
        let out_channels = w_dims[0];
        let group_per_channel = w.len() / out_channels;
        let sqnr_per_tensor_db = worst_channel_sqnr_db(&w, group_per_channel, w.len());
        let sqnr_per_channel_db = worst_channel_sqnr_db(&w, group_per_channel, group_per_channel);
        let per_channel = match scales {
            WeightScales::PerTensor => false,
            WeightScales::PerChannel => true,
            WeightScales::Auto => sqnr_per_tensor_db < AUTO_MIN_SQNR_DB,
        };
        let (w_q, w_scales) = quantize_weights(&w, if per_channel { group_per_channel } else { w.len() });
        let bias = match node.input.get(2).filter(|s| !s.is_empty()) {
            Some(name) => graph::f32_values(graph::initializer(g, name).context("conv bias is not constant")?)?,
            None => vec![0.0; out_channels],
        };
        let bias_q: Vec<i32> = bias
            .iter()
            .enumerate()
            .map(|(c, b)| {
                let s = x_affine.scale * w_scales[if per_channel { c } else { 0 }];
                (b / s).round() as i32
            })
            .collect();

        let relu = fused_relu(&lookup, &readers, &node.output[0]);
        if let Some(relu_out) = &relu {
            let j = readers[&node.output[0]][0];
            skipped_relus.insert(j);
            debug_assert_eq!(&old_nodes[j].output[0], relu_out);
        }
        let y = relu.clone().unwrap_or_else(|| node.output[0].clone());
        let y_affine = Affine::of(range_of(&y)?);
        let y_q = format!("{y}.i8");
        let prefix = &node.output[0];
        let w_scale_dims: Vec<usize> = if per_channel { vec![out_channels] } else { vec![] };
        g.initializer
            .push(graph::i8_tensor(&format!("{prefix}.w_q"), &w_dims, &w_q));
        g.initializer.push(graph::f32_tensor(
            &format!("{prefix}.w_scale"),
            &w_scale_dims,
            &w_scales,
        ));
        g.initializer.push(graph::i8_tensor(
            &format!("{prefix}.w_zero_point"),
            &w_scale_dims,
            &vec![0; w_scales.len()],
        ));
        g.initializer
            .push(graph::i32_tensor(&format!("{prefix}.b_q"), &[out_channels], &bias_q));
        add_affine(g, &y, y_affine);
        let x_name = &x_q;
        let mut conv = graph::node(
            "QLinearConv",
            &format!("{prefix}.qconv"),
            &[
                x_name,
                &format!("{x}.scale"),
                &format!("{x}.zero_point"),
                &format!("{prefix}.w_q"),
                &format!("{prefix}.w_scale"),
                &format!("{prefix}.w_zero_point"),
                &format!("{y}.scale"),
                &format!("{y}.zero_point"),
                &format!("{prefix}.b_q"),
            ],
            &[&y_q],
        );
        conv.attribute = node.attribute.clone();
        new_nodes.push(conv);
        quantized.insert(y.clone(), (y_q.clone(), y_affine));

        // Float readers (anything but a quantized conv) and graph outputs need the value back.
        let y_readers: Vec<usize> = readers.get(&y).cloned().unwrap_or_default();
        let float_reader = y_readers.iter().any(|&j| !quantizes[j]);
        if float_reader || graph::is_graph_output(&lookup, &y) {
            new_nodes.push(graph::node(
                "DequantizeLinear",
                &format!("{y}.dequantize"),
                &[&y_q, &format!("{y}.scale"), &format!("{y}.zero_point")],
                &[&y],
            ));
        }
        reports.push(LayerReport {
            name: prefix.clone(),
            sqnr_per_tensor_db,
            sqnr_per_channel_db,
            per_channel,
            fused_relu: relu.is_some(),
        });
    }
    if reports.is_empty() {
        bail!("the model has no convolution to quantize");
    }
    g.node = new_nodes;
    graph::remove_unused_initializers(g);
    Ok((model, reports))
}

/// Adds the scale and zero-point initializers of an activation tensor (once).
fn add_affine(g: &mut GraphProto, tensor: &str, affine: Affine) {
    let scale = format!("{tensor}.scale");
    if graph::initializer(g, &scale).is_none() {
        g.initializer.push(graph::f32_tensor(&scale, &[], &[affine.scale]));
        g.initializer.push(graph::i8_tensor(
            &format!("{tensor}.zero_point"),
            &[],
            &[affine.zero_point],
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affine_range_holds_zero_and_maps_ends() {
        let a = Affine::of(Range { min: -1.0, max: 1.0 });
        assert!((a.scale - 2.0 / 255.0).abs() < 1e-7);
        // -1 sits 127.5 steps below zero, so zero lands between -1 and 0: either is a correct rounding.
        assert!((-1..=0).contains(&a.zero_point), "{}", a.zero_point);
        let relu = Affine::of(Range { min: 0.5, max: 2.55 });
        assert_eq!(relu.zero_point, -128, "a positive range is widened to start at 0");
        assert!((relu.scale - 0.01).abs() < 1e-7);
    }

    #[test]
    fn per_channel_scales_beat_per_tensor_on_unequal_channels() {
        // Channel 0 is 100x larger than channel 1: one scale wipes channel 1 out.
        let w = [1.0, -0.5, 0.25, 0.75, 0.01, -0.005, 0.0025, 0.0075];
        let (q, scales) = quantize_weights(&w, 8);
        assert_eq!(scales, [1.0 / 127.0]);
        assert_eq!(&q[4..], [1, -1, 0, 1]);
        assert!(worst_channel_sqnr_db(&w, 4, 4) > worst_channel_sqnr_db(&w, 4, 8) + 20.0);
        assert_eq!(worst_channel_sqnr_db(&[0.0; 4], 4, 4), f64::INFINITY);
    }
}
