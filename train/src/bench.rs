//! Training-step timing of a network, to compare backends and networks on one machine.

use std::fmt::Write;
use std::time::Instant;

use burn::optim::AdamWConfig;
use burn::prelude::*;
use fer_protocol::{Expression, INPUT};

use crate::batch::HostBatch;
use crate::config::TclConfig;
use crate::kernels::{batch_norm_relu, depthwise, max_pool2x2, pointwise, stem_conv};
use crate::model::{ExpressionNet, NetworkConfig};
use crate::training::train_step;

/// Forward and backward time of one op of the network, in isolation.
pub struct OpTime {
    /// Which op, e.g. `block 3 depthwise 3x3 [64, 32, 24, 24]`.
    pub name: String,
    /// Milliseconds of the forward pass.
    pub forward_ms: f64,
    /// Milliseconds of the backward pass (the gradients of the op's input and parameters).
    pub backward_ms: f64,
}

/// Times every op of `network` on its own, forward and backward, at the shapes a batch of
/// `batch_size` gives it (median of `repeats` runs after one warm-up).
///
/// Each op runs on a fresh input that requires a gradient, and the backward pass starts from
/// `sum(y ⊙ r)` with a fixed random `r`, so it computes exactly the gradients the op would get
/// inside the network. Summed, the rows come close to a training step's forward and backward;
/// what they leave out is the optimizer and the host-to-tensor copies.
pub fn profile_ops(device: &Device, network: &NetworkConfig, batch_size: usize, repeats: usize) -> Vec<OpTime> {
    let device = device.clone().autodiff();
    device.seed(0);
    let model = ExpressionNet::new(network, &device);
    let random = |shape: [usize; 4]| Tensor::<4>::random(shape, burn::tensor::Distribution::Normal(0.0, 1.0), &device);
    let time = |name: String, shape: [usize; 4], op: &dyn Fn(Tensor<4>) -> Tensor<4>| {
        let (mut forward, mut backward) = (Vec::new(), Vec::new());
        let probe = op(random(shape));
        let weights = Tensor::<4>::random(probe.dims(), burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        for _ in 0..repeats + 1 {
            let x = random(shape).require_grad();
            let _ = device.sync();
            let started = Instant::now();
            let y = op(x);
            let _ = device.sync();
            forward.push(started.elapsed().as_secs_f64() * 1e3);
            let loss = (y * weights.clone()).sum();
            let started = Instant::now();
            let _grads = loss.backward();
            let _ = device.sync();
            backward.push(started.elapsed().as_secs_f64() * 1e3);
        }
        OpTime {
            name: format!("{name} {shape:?}"),
            forward_ms: median(&forward[1..]),
            backward_ms: median(&backward[1..]),
        }
    };
    let mut ops = Vec::new();
    for (i, (spec, block)) in network.blocks().iter().zip(model.blocks()).enumerate() {
        let input = [batch_size, spec.input, spec.side, spec.side];
        if let Some(conv) = &block.depthwise {
            ops.push(time(format!("block {i} depthwise 3x3"), input, &|x| depthwise(conv, x)));
        }
        let [_, _, k, _] = block.conv.weight.dims();
        ops.push(time(
            format!("block {i} conv {k}x{k}"),
            input,
            &|x| match &block.depthwise {
                Some(_) => pointwise(&block.conv, x),
                None => stem_conv(&block.conv, x),
            },
        ));
        let output = [batch_size, spec.output, spec.side, spec.side];
        ops.push(time(format!("block {i} batch norm + relu"), output, &|x| {
            batch_norm_relu(&block.norm, x)
        }));
        if spec.pool {
            let pool = burn::nn::pool::MaxPool2dConfig::new([2, 2]).init();
            ops.push(time(format!("block {i} max-pool"), output, &|x| max_pool2x2(&pool, x)));
        }
    }
    let side = fer_protocol::INPUT.width / 8;
    ops.push(time(
        "head (attention, pooling, embedding, classifier)".into(),
        [batch_size, network.widths[3], side, side],
        &|x| {
            let out = model.head(x);
            let [b, k] = out.logits.dims();
            out.logits.reshape([b, k, 1, 1])
        },
    ));
    ops
}

/// The profile as a markdown table with a total row.
pub fn profile_table(ops: &[OpTime]) -> String {
    let mut out = String::from("| op [input shape] | forward ms | backward ms |\n|---|---:|---:|\n");
    for op in ops {
        let _ = writeln!(out, "| {} | {:.2} | {:.2} |", op.name, op.forward_ms, op.backward_ms);
    }
    let (f, b): (f64, f64) = (
        ops.iter().map(|o| o.forward_ms).sum(),
        ops.iter().map(|o| o.backward_ms).sum(),
    );
    let _ = writeln!(out, "| **sum** | **{f:.1}** | **{b:.1}** |");
    out
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// Mean milliseconds of one training step (CE + TCL) of `network` on random inputs, after 2
/// warm-up steps.
pub fn train_step_ms(device: &Device, network: &NetworkConfig, batch_size: usize, steps: usize) -> f64 {
    let device = device.clone().autodiff();
    device.seed(0);
    let mut model = ExpressionNet::new(network, &device);
    let mut optimizer = AdamWConfig::new().init();
    let adjustment = Tensor::<2>::zeros([1, Expression::COUNT], &device);
    let labels: Vec<i64> = (0..batch_size as i64).map(|i| i % Expression::COUNT as i64).collect();
    let batch = HostBatch {
        inputs: (0..batch_size * INPUT.len())
            .map(|i| INPUT.normalise(((i * 7919) % 255) as f32))
            .collect(),
        targets: labels
            .iter()
            .flat_map(|&l| (0..Expression::COUNT as i64).map(move |k| if k == l { 1.0 } else { 0.0 }))
            .collect(),
        labels,
    };
    let tcl = TclConfig::default();
    let mut started = Instant::now();
    for step in 0..steps + 2 {
        if step == 2 {
            started = Instant::now();
        }
        train_step(
            &mut model,
            &mut optimizer,
            &batch,
            Some(&tcl),
            &adjustment,
            1e-3,
            &device,
        );
    }
    let _ = device.sync();
    started.elapsed().as_secs_f64() * 1000.0 / steps as f64
}
