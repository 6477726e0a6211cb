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

/// How an activation's int8 range is chosen from what calibration saw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum RangeMethod {
    /// The smallest and largest value seen: nothing clips, rare outliers widen every step.
    MinMax,
    /// The clipping range with the least expected squared error over the observed values
    /// (rounding noise inside, clipping error outside; a second calibration pass builds each
    /// tensor's histogram).
    Mse,
}

/// Bins of the histograms the MSE search runs over.
const BINS: usize = 2048;
/// Fractions of each side of the min-max range the MSE search tries.
const CLIP_STEPS: usize = 40;

/// The activation ranges of `tensors` over `inputs`, chosen by `method`.
pub fn ranges(
    model: &ModelProto,
    tensors: &[String],
    inputs: &[Vec<f32>],
    method: RangeMethod,
) -> Result<HashMap<String, Range>> {
    let full = observe(model, tensors, inputs)?;
    if method == RangeMethod::MinMax {
        return Ok(full);
    }
    let bounds: Vec<Range> = tensors.iter().map(|t| widened(full[t])).collect();
    let mut histograms = vec![vec![0u64; BINS]; tensors.len()];
    for_each_run(model, tensors, inputs, "clipping", |outputs| {
        for ((h, r), value) in histograms.iter_mut().zip(&bounds).zip(outputs) {
            let width = (r.max - r.min).max(f32::MIN_POSITIVE);
            for &v in value.to_plain_array_view::<f32>()? {
                let bin = (((v - r.min) / width) * BINS as f32) as usize;
                h[bin.min(BINS - 1)] += 1;
            }
        }
        Ok(())
    })?;
    Ok(tensors
        .iter()
        .zip(bounds)
        .zip(&histograms)
        .map(|((t, r), h)| (t.clone(), least_squared_error(r, h)))
        .collect())
}

/// A range widened to hold 0, as the int8 affine form needs.
fn widened(r: Range) -> Range {
    Range {
        min: r.min.min(0.0),
        max: r.max.max(0.0),
    }
}

/// The range inside `full` (shrunk from either side towards 0 in steps of 1/[`CLIP_STEPS`])
/// whose 8-bit quantization has the least expected squared error over histogram `h`.
fn least_squared_error(full: Range, h: &[u64]) -> Range {
    let width = (full.max - full.min) as f64;
    if width <= 0.0 {
        return full;
    }
    let center = |i: usize| full.min as f64 + (i as f64 + 0.5) * width / h.len() as f64;
    let error = |lo: f64, hi: f64| {
        let step = (hi - lo) / 255.0;
        h.iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(|(i, &c)| {
                let x = center(i);
                let e = if x < lo {
                    (lo - x).powi(2)
                } else if x > hi {
                    (x - hi).powi(2)
                } else {
                    step * step / 12.0
                };
                c as f64 * e
            })
            .sum::<f64>()
    };
    let fractions = |bound: f32| -> Vec<f64> {
        if bound == 0.0 {
            vec![0.0]
        } else {
            (1..=CLIP_STEPS)
                .map(|k| bound as f64 * k as f64 / CLIP_STEPS as f64)
                .collect()
        }
    };
    let mut best = (error(full.min as f64, full.max as f64), full);
    for &lo in &fractions(full.min) {
        for &hi in &fractions(full.max) {
            let e = error(lo, hi);
            if e < best.0 {
                best = (
                    e,
                    Range {
                        min: lo as f32,
                        max: hi as f32,
                    },
                );
            }
        }
    }
    best.1
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
    let plan = fer_runtime::typed_model(&graph::encode(&probe))
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
        visit(&fer_runtime::run(
            &plan,
            tvec!(fer_runtime::input_tensor(input)?.into()),
        )?)?;
    }
    bar.finish_and_clear();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mse_clipping_cuts_a_rare_outlier_and_keeps_a_dense_range() {
        // Ten million values spread over [0, 1] and one at 20: min-max would spend 95 % of the
        // levels on the empty stretch up to the outlier. (With few values the outlier's squared
        // clipping error outweighs their rounding noise, and min-max is the better choice.)
        let full = Range { min: 0.0, max: 20.0 };
        let mut h = vec![0u64; BINS];
        for count in h.iter_mut().take(BINS / 20) {
            *count = 100_000;
        }
        h[BINS - 1] = 1;
        let r = least_squared_error(full, &h);
        assert!(r.min == 0.0 && r.max > 0.9 && r.max < 2.5, "{r:?}");
        // Evenly filled: nothing to gain from clipping.
        let even = least_squared_error(full, &vec![100; BINS]);
        assert_eq!(even, full);
    }
}
