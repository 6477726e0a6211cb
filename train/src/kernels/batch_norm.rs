//! BatchNorm2d followed by ReLU, for training, as one operation with a backward pass of its own.
//!
//! Replaces `relu(BatchNorm::forward(x))` while the network trains. Burn 0.22's flex backend
//! composes batch-norm training from generic tensor ops: the statistics through a swap of the
//! batch and channel axes (a copy), means, a subtraction and a square; the normalisation and the
//! affine map as broadcast passes; its backward as about a dozen more; and ReLU adds a pass each
//! way. Every pass streams the whole activation through memory, and at 64 × 32 × 48 × 48 that
//! made BatchNorm the largest item of a training step (`fer-train bench --ops`). Here the forward
//! is two passes (the moments of each channel, then normalise, scale, shift and ReLU in one), the
//! backward two (two sums per channel, then the input gradient), one parallel task per channel
//! that makes its second pass while the channel's planes are still in cache. Each channel's sums
//! are taken in a fixed order, so training stays deterministic.
//!
//! The numbers are Burn's `batch_norm_train` + `relu`: the biased batch variance, for the
//! normalisation and for the running statistics alike (Burn's convention; PyTorch keeps the
//! unbiased one); epsilon inside the square root; a zero gradient where the output is zero; a NaN
//! passed through, forward and backward.
//! Inference and export keep `BatchNorm` and ReLU, which fold into the conv before it.

// See kernels/separable.rs: the ndarray backend stays routable for `--backend ndarray`.
#![cfg_attr(feature = "ndarray", allow(deprecated))]

#[cfg(feature = "ndarray")]
use burn::backend::NdArray;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::BatchNorm;
use burn::prelude::*;
use burn::tensor::activation::relu;
use rayon::prelude::*;
use wide::f32x8;

use super::{LANES, Planes};

/// The output, the batch mean and the biased batch variance of [`BatchNormReluBackend`].
type Forward<B> = (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>);

/// BatchNorm with the batch's own statistics, then ReLU, with its own backward pass.
#[backend_extension(
    Flex,
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait BatchNormReluBackend: Backend {
    /// `relu(γ·(x − μ)/√(σ² + ε) + β)` over `x` `[B, C, ...]`, with `μ` and `σ²` each channel's
    /// mean and biased variance over the batch; returns the output, `μ` and `σ²` (`[C]` each).
    fn batch_norm_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_forward::<Self>(x, gamma, beta, epsilon)
    }

    /// The gradients of `x`, `γ` and `β`, given the forward's input, output and statistics and
    /// the gradient `grad` of its output.
    fn batch_norm_relu_backward(
        x: FloatTensor<Self>,
        output: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        mean: FloatTensor<Self>,
        variance: FloatTensor<Self>,
        epsilon: f64,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        composed_backward::<Self>(x, output, gamma, mean, variance, epsilon, grad)
    }
}

/// Burn's own ops: the reference the fused kernels are checked against, and the path of every
/// backend without them.
fn composed_forward<B: Backend>(
    x: FloatTensor<B>,
    gamma: FloatTensor<B>,
    beta: FloatTensor<B>,
    epsilon: f64,
) -> Forward<B> {
    let result = B::batch_norm_train(x, gamma, beta, epsilon);
    (B::relu(result.output), result.mean, result.variance)
}

/// Burn's own backward of [`composed_forward`].
fn composed_backward<B: Backend>(
    x: FloatTensor<B>,
    output: FloatTensor<B>,
    gamma: FloatTensor<B>,
    mean: FloatTensor<B>,
    variance: FloatTensor<B>,
    epsilon: f64,
    grad: FloatTensor<B>,
) -> Forward<B> {
    let grad = B::relu_backward(output, grad);
    let grads = B::batch_norm_train_backward(x, gamma, mean, variance, epsilon, grad);
    (grads.x_grad, grads.gamma_grad, grads.beta_grad)
}

#[cfg(feature = "ndarray")]
impl BatchNormReluBackend for NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl BatchNormReluBackend for burn::backend::Cube {}

/// `[B, C, ...]` as (batch, channels, elements per plane).
fn planes(x: &FlexTensor) -> (usize, usize, usize) {
    let shape = x.shape();
    let (batch, channels) = (shape[0], shape[1]);
    (batch, channels, shape.num_elements() / (batch * channels).max(1))
}

impl BatchNormReluBackend for Flex {
    fn batch_norm_relu(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, epsilon: f64) -> Forward<Self> {
        let (x, gamma, beta) = (x.to_contiguous(), gamma.to_contiguous(), beta.to_contiguous());
        let slices = (x.as_slice::<f32>(), gamma.as_slice::<f32>(), beta.as_slice::<f32>());
        let (Some(xs), Some(gammas), Some(betas)) = slices else {
            return composed_forward::<Self>(x, gamma, beta, epsilon);
        };
        let (batch, channels, plane) = planes(&x);
        if xs.is_empty() {
            return composed_forward::<Self>(x, gamma, beta, epsilon);
        }
        let count = (batch * plane) as f64;
        let output = Planes::new(batch * channels, plane);
        // One task per channel: its moments, then its output planes while its input is still in
        // cache.
        let moments: Vec<(f64, f64)> = (0..channels)
            .into_par_iter()
            .map(|c| {
                let input = |b: usize| &xs[(b * channels + c) * plane..][..plane];
                // Moments about the channel's first value, where Σx² − (Σx)²/n would cancel for a
                // channel whose mean is large next to its spread.
                let shift = xs[c * plane];
                let (sum, squares) = (0..batch)
                    .map(|b| shifted_moments(input(b), shift))
                    .fold((0.0, 0.0), |(s, q), (ds, dq)| (s + ds, q + dq));
                let centre = sum / count;
                // Clamped at 0 against rounding, but not with `max`, which would turn a NaN into 0.
                let variance = squares / count - centre * centre;
                let (mean, variance) = (shift as f64 + centre, if variance < 0.0 { 0.0 } else { variance });
                // y = relu((x − μ)·scale + β), scale = γ/√(σ² + ε).
                let scale = (gammas[c] as f64 / (variance + epsilon).sqrt()) as f32;
                let (centre, beta) = (mean as f32, betas[c]);
                for b in 0..batch {
                    // SAFETY: plane b·C + c belongs to this channel's task alone.
                    let out = unsafe { output.plane(b * channels + c) };
                    for (y, &x) in out.iter_mut().zip(input(b)) {
                        y.write(relu_of((x - centre) * scale + beta));
                    }
                }
                (mean, variance)
            })
            .collect();
        // SAFETY: each channel's task wrote its plane of every sample.
        let out = unsafe { output.finish() };
        let (mean, variance): (Vec<f32>, Vec<f32>) = moments.iter().map(|&(m, v)| (m as f32, v as f32)).unzip();
        (
            FlexTensor::from_data(TensorData::new(out, x.shape())),
            FlexTensor::from_data(TensorData::new(mean, [channels])),
            FlexTensor::from_data(TensorData::new(variance, [channels])),
        )
    }

    fn batch_norm_relu_backward(
        x: FlexTensor,
        output: FlexTensor,
        gamma: FlexTensor,
        mean: FlexTensor,
        variance: FlexTensor,
        epsilon: f64,
        grad: FlexTensor,
    ) -> Forward<Self> {
        let [x, output, gamma, mean, variance, grad] =
            [x, output, gamma, mean, variance, grad].map(|t| t.to_contiguous());
        let slices = (
            x.as_slice::<f32>(),
            output.as_slice::<f32>(),
            gamma.as_slice::<f32>(),
            mean.as_slice::<f32>(),
            variance.as_slice::<f32>(),
            grad.as_slice::<f32>(),
        );
        let (Some(xs), Some(ys), Some(gammas), Some(means), Some(variances), Some(grads)) = slices else {
            return composed_backward::<Self>(x, output, gamma, mean, variance, epsilon, grad);
        };
        let (batch, channels, plane) = planes(&x);
        let count = (batch * plane) as f64;
        let x_grad = Planes::new(batch * channels, plane);
        // One task per channel: its two sums, then its input gradient while its planes are still
        // in cache.
        let (gamma_grad, beta_grad): (Vec<f32>, Vec<f32>) = (0..channels)
            .into_par_iter()
            .map(|c| {
                let at = |b: usize| (b * channels + c) * plane..(b * channels + c + 1) * plane;
                let mean = means[c];
                // Σg and Σg·(x − μ), g the output gradient where the ReLU let it through.
                let (sum, centred) = (0..batch)
                    .map(|b| gated_sums(&grads[at(b)], &ys[at(b)], &xs[at(b)], mean))
                    .fold((0.0, 0.0), |(s, q), (ds, dq)| (s + ds, q + dq));
                // dx = a·(g − mean(g) − x̂·mean(g·x̂)), a = γ/σ, x̂ = (x − μ)/σ, σ = √(var + ε):
                // written as a·g + k·(x − μ) + offset with per-channel constants.
                let inv_std = 1.0 / (variances[c] as f64 + epsilon).sqrt();
                let a = gammas[c] as f64 * inv_std;
                let k = (-a * inv_std * inv_std * centred / count) as f32;
                let (offset, a) = ((-a * sum / count) as f32, a as f32);
                for b in 0..batch {
                    // SAFETY: plane b·C + c belongs to this channel's task alone.
                    let out = unsafe { x_grad.plane(b * channels + c) };
                    let inputs = grads[at(b)].iter().zip(&xs[at(b)]).zip(&ys[at(b)]);
                    for (dx, ((&g, &x), &y)) in out.iter_mut().zip(inputs) {
                        dx.write(a * gate(g, y) + k * (x - mean) + offset);
                    }
                }
                ((centred * inv_std) as f32, sum as f32)
            })
            .unzip();
        // SAFETY: each channel's task wrote its plane of every sample.
        let x_grad = unsafe { x_grad.finish() };
        (
            FlexTensor::from_data(TensorData::new(x_grad, x.shape())),
            FlexTensor::from_data(TensorData::new(gamma_grad, [channels])),
            FlexTensor::from_data(TensorData::new(beta_grad, [channels])),
        )
    }
}

/// `(Σ (v − shift), Σ (v − shift)²)` over `values`, in vector lanes.
fn shifted_moments(values: &[f32], shift: f32) -> (f64, f64) {
    let (chunks, rest) = values.as_chunks::<LANES>();
    let centre = f32x8::splat(shift);
    let (mut sums, mut squares) = (f32x8::ZERO, f32x8::ZERO);
    for &chunk in chunks {
        let d = f32x8::from(chunk) - centre;
        sums += d;
        squares += d * d;
    }
    let (mut sum, mut square) = (widen_sum(sums), widen_sum(squares));
    for &v in rest {
        let d = (v - shift) as f64;
        sum += d;
        square += d * d;
    }
    (sum, square)
}

/// `(Σ g, Σ g·(x − mean))` over one plane, `g` the gradient where the output `y` is positive,
/// in vector lanes.
fn gated_sums(grad: &[f32], y: &[f32], x: &[f32], mean: f32) -> (f64, f64) {
    let (grad_chunks, grad_rest) = grad.as_chunks::<LANES>();
    let (y_chunks, y_rest) = y.as_chunks::<LANES>();
    let (x_chunks, x_rest) = x.as_chunks::<LANES>();
    let centre = f32x8::splat(mean);
    let (mut sums, mut products) = (f32x8::ZERO, f32x8::ZERO);
    for ((&g, &y), &x) in grad_chunks.iter().zip(y_chunks).zip(x_chunks) {
        // Zero where y ≤ 0, which keeps a NaN output's gradient, as `gate` does.
        let g = f32x8::from(y)
            .simd_le(f32x8::ZERO)
            .bitselect(f32x8::ZERO, f32x8::from(g));
        sums += g;
        products += g * (f32x8::from(x) - centre);
    }
    let (mut sum, mut product) = (widen_sum(sums), widen_sum(products));
    for ((&g, &y), &x) in grad_rest.iter().zip(y_rest).zip(x_rest) {
        let g = gate(g, y) as f64;
        sum += g;
        product += g * (x - mean) as f64;
    }
    (sum, product)
}

/// The ReLU's gradient `g` given its output `y`: zero where the output is zero, kept where it is
/// positive or NaN, as Burn's `relu_backward` does.
fn gate(g: f32, y: f32) -> f32 {
    if y.is_nan() || y > 0.0 { g } else { 0.0 }
}

/// Burn's ReLU: a NaN passes through, as in PyTorch.
fn relu_of(v: f32) -> f32 {
    if v.is_nan() || v > 0.0 { v } else { 0.0 }
}

/// The sum of a vector's lanes, in f64.
fn widen_sum(lanes: f32x8) -> f64 {
    lanes.to_array().iter().map(|&v| v as f64).sum()
}

impl<B: Backend + BatchNormReluBackend, C: CheckpointStrategy> BatchNormReluBackend for Autodiff<B, C> {
    fn batch_norm_relu(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> Forward<Self> {
        #[derive(Debug)]
        struct BatchNormReluBackward;

        impl<B: Backend + BatchNormReluBackend> Backward<B, 3> for BatchNormReluBackward {
            /// Input, output, γ, mean, variance, ε.
            type State = (
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                FloatTensor<B>,
                f64,
            );

            fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x, node_gamma, node_beta] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, output, gamma, mean, variance, epsilon) = ops.state;
                let (x_grad, gamma_grad, beta_grad) =
                    B::batch_norm_relu_backward(x, output, gamma, mean, variance, epsilon, grad);
                for (node, grad) in [(node_x, x_grad), (node_gamma, gamma_grad), (node_beta, beta_grad)] {
                    if let Some(node) = node {
                        grads.register::<B>(node.id, grad);
                    }
                }
            }
        }

        let (x, x_node) = x.into_parts();
        let (gamma, gamma_node) = gamma.into_parts();
        let (beta, beta_node) = beta.into_parts();
        let (output, mean, variance) = B::batch_norm_relu(x.clone(), gamma.clone(), beta, epsilon);
        let output = match BatchNormReluBackward
            .prepare::<C>([x_node, gamma_node, beta_node])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(
                (x, output.clone(), gamma, mean.clone(), variance.clone(), epsilon),
                output,
            ),
            OpsKind::UnTracked(prep) => prep.finish(output),
        };
        (output, Self::from_inner(mean), Self::from_inner(variance))
    }
}

/// `relu(norm.forward(x))`; while `norm` trains, through [`BatchNormReluBackend`], with the
/// running statistics updated as `BatchNorm::forward` updates them.
pub(crate) fn batch_norm_relu(norm: &BatchNorm, x: Tensor<4>) -> Tensor<4> {
    let device = x.device();
    if !(device.is_autodiff() && norm.training.is_enabled()) {
        return relu(norm.forward(x));
    }
    let (output, mean, variance) = <Dispatch as BatchNormReluBackend>::batch_norm_relu(
        x.into_dispatch(),
        norm.gamma.val().into_dispatch(),
        norm.beta.val().into_dispatch(),
        norm.epsilon,
    );
    let momentum = norm.momentum;
    let update = |running: Tensor<1>, batch: burn::backend::DispatchTensor| {
        running
            .to_device(&device)
            .mul_scalar(1.0 - momentum)
            .add(Tensor::<1>::from_dispatch(batch).detach().mul_scalar(momentum))
            .detach()
    };
    norm.running_mean.update(update(norm.running_mean.value_sync(), mean));
    norm.running_var.update(update(norm.running_var.value_sync(), variance));
    Tensor::from_dispatch(output)
}

#[cfg(test)]
mod tests {
    use burn::module::Param;
    use burn::nn::BatchNormConfig;
    use burn::tensor::Distribution;

    use super::*;
    use crate::kernels::tests::{assert_close, finite_difference_check};

    /// Output, input gradient, γ and β gradients, running mean and variance.
    fn run(fused: bool, x: &Tensor<4>, r: &Tensor<4>, norm: &BatchNorm) -> [Vec<f32>; 6] {
        let x = x.clone().require_grad();
        let y = if fused {
            batch_norm_relu(norm, x.clone())
        } else {
            relu(norm.forward(x.clone()))
        };
        let grads = (y.clone() * r.clone()).sum().backward();
        let vec = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
        [
            y.into_data().try_to_vec().unwrap(),
            x.grad(&grads).unwrap().into_data().try_to_vec().unwrap(),
            vec(norm.gamma.val().grad(&grads).unwrap()),
            vec(norm.beta.val().grad(&grads).unwrap()),
            vec(norm.running_mean.value_sync()),
            vec(norm.running_var.value_sync()),
        ]
    }

    /// Asserts that the kernel gives Burn's output, gradients and running statistics on `x`
    /// (loss `sum(y ⊙ r)`), each path with its own module from `module`; returns the kernel's
    /// output.
    fn assert_matches_burn(
        x: &Tensor<4>,
        r: &Tensor<4>,
        module: impl Fn() -> BatchNorm,
        tolerance: f32,
        what: &str,
    ) -> Vec<f32> {
        let [kernel, reference] = [true, false].map(|fused| run(fused, x, r, &module()));
        let names = [
            "output",
            "input gradient",
            "γ gradient",
            "β gradient",
            "running mean",
            "running var",
        ];
        for ((name, a), b) in names.iter().zip(&kernel).zip(&reference) {
            assert_close(a, b, tolerance, &format!("{name} of {what}"));
        }
        kernel.into_iter().next().unwrap()
    }

    #[test]
    fn matches_burns_batch_norm_and_relu_on_random_shapes() {
        let device = Device::flex().autodiff();
        // Non-square planes, planes shorter than a lane group, one sample, odd channel counts,
        // and an offset mean that a naive Σx² − (Σx)²/n would lose.
        for (seed, shape, offset) in [
            (1, [4, 3, 5, 7], 0.0),
            (2, [1, 5, 2, 3], 0.0),
            (3, [3, 2, 9, 9], 40.0),
            (4, [64, 8, 6, 6], -2.0),
        ] {
            device.seed(seed);
            let noise = |n: usize| Tensor::<1>::random([n], Distribution::Normal(0.0, 0.5), &device);
            let (gamma, beta) = (noise(shape[1]) + 1.0, noise(shape[1]));
            // A fresh module per path: clones of one would share their running statistics.
            let module = || {
                let mut norm = BatchNormConfig::new(shape[1]).init(&device);
                norm.gamma = Param::from_tensor(gamma.clone());
                norm.beta = Param::from_tensor(beta.clone());
                norm
            };
            let random = |s: [usize; 4]| Tensor::<4>::random(s, Distribution::Normal(0.0, 1.0), &device);
            let (x, r) = (random(shape) * 3.0 + offset, random(shape));
            assert_matches_burn(&x, &r, module, 2e-4, &format!("{shape:?} (offset {offset})"));
        }
    }

    #[test]
    fn zeros_and_nans_meet_the_relu_as_in_burn() {
        let device = Device::flex().autodiff();
        // Channel 0 is constant: it normalises to exactly 0, so with β = 0 its output is exactly 0
        // and its gradient is cut. Channel 1 holds a NaN, which spreads through its statistics
        // and passes the ReLU, forward and backward.
        let shape = [2, 2, 3, 3];
        let mut values = vec![2.0f32; 36];
        for b in 0..2 {
            for k in 0..9 {
                values[(b * 2 + 1) * 9 + k] = (b * 9 + k) as f32 * 0.37 - 1.0;
            }
        }
        values[9 + 4] = f32::NAN;
        let x = Tensor::<4>::from_data(TensorData::new(values, shape), &device);
        let r = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let output = assert_matches_burn(
            &x,
            &r,
            || BatchNormConfig::new(2).init(&device),
            1e-5,
            "zeros and a NaN",
        );
        assert!(output[..9].iter().all(|&y| y == 0.0) && output[9..18].iter().all(|y| y.is_nan()));
    }

    #[test]
    fn inference_keeps_burns_batch_norm() {
        let device = Device::flex();
        let norm = BatchNormConfig::new(3).init(&device);
        let x = Tensor::<4>::random([2, 3, 4, 4], Distribution::Normal(1.0, 2.0), &device);
        let same = (batch_norm_relu(&norm, x.clone()) - relu(norm.forward(x))).abs().max();
        assert_eq!(same.into_scalar::<f32>(), 0.0);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let device = Device::flex().autodiff();
        device.seed(11);
        let shape = [3, 2, 3, 4];
        let random = |n: usize| Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
        let (x, r) = (random(72), random(72).reshape(shape));
        let (gamma, beta) = (random(2) + 1.0, random(2));
        finite_difference_check(&[x, gamma, beta], |inputs| {
            let (output, _, _) = <Dispatch as BatchNormReluBackend>::batch_norm_relu(
                inputs[0].clone().reshape(shape).into_dispatch(),
                inputs[1].clone().into_dispatch(),
                inputs[2].clone().into_dispatch(),
                1e-5,
            );
            (Tensor::<4>::from_dispatch(output) * r.clone()).sum()
        });
    }
}
