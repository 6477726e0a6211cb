//! The 1x1 conv (no bias) of a separable block for training: batched matmuls forward and for the
//! input gradient, and a weight gradient that accumulates the batch in place.
//!
//! Replaces `Conv2d::forward` for the pointwise convs while they train. Burn 0.22's flex backend
//! takes a 1x1 conv's weight gradient through its generic conv (an `H × W` kernel over the batch,
//! one matrix-vector product per input channel); as a broadcast matmul `[1, O, C] @ [B, C, HW]`
//! its weight gradient is a batch of `B` products `dY_b · X_bᵀ` written out as `[B, O, C]` and
//! then summed over the batch, which at 6x6 maps and 256 channels cost four times the forward pass
//! (`fer-train bench --ops`: 17 ms against 4 ms at batch 64). Here the batch is split into parts of
//! 32 samples, each accumulated by gemm straight into one `[O, C]` buffer on its own thread, and the
//! parts added in a fixed order, so training stays deterministic on a machine. Inference and
//! export keep `Conv2d`, which BatchNorm folds into and the int8 export quantizes.

// See kernels/separable.rs: the ndarray backend stays routable for `--backend ndarray`.
#![cfg_attr(feature = "ndarray", allow(deprecated))]

#[cfg(feature = "ndarray")]
use burn::backend::NdArray;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, Shape, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use rayon::prelude::*;

use super::{conv_or_kernel, conv_with_backward};

/// Samples whose weight gradients one task accumulates (a batch of 64 makes two tasks, one per
/// core here).
const SAMPLES_PER_PART: usize = 32;

/// `[B, C, H, W]` as `[B, C, H·W]`.
fn flat<B: Backend>(x: FloatTensor<B>) -> FloatTensor<B> {
    let [b, c, h, w] = x.shape().dims();
    B::float_reshape(x, Shape::new([b, c, h * w]))
}

/// `[O, C, 1, 1]` as `[1, O, C]`.
fn matrix<B: Backend>(weight: FloatTensor<B>) -> FloatTensor<B> {
    let [o, c, _, _] = weight.shape().dims();
    B::float_reshape(weight, Shape::new([1, o, c]))
}

/// The 1x1 conv without bias, with its own backward pass.
#[backend_extension(
    Flex,
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait PointwiseBackend: Backend {
    /// `x` `[B, C, H, W]` through `weight` `[O, C, 1, 1]`: `[B, O, H, W]`.
    fn pointwise_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let [b, _, h, w] = x.shape().dims();
        let out = weight.shape()[0];
        let y = Self::float_matmul(matrix::<Self>(weight), flat::<Self>(x));
        Self::float_reshape(y, Shape::new([b, out, h, w]))
    }

    /// The gradient of `x`, given the output's gradient `grad`.
    fn pointwise_conv_input_grad(weight: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let [b, _, h, w] = grad.shape().dims();
        let channels = weight.shape()[1];
        let weight_t = Self::float_swap_dims(matrix::<Self>(weight), 1, 2);
        let x_grad = Self::float_matmul(weight_t, flat::<Self>(grad));
        Self::float_reshape(x_grad, Shape::new([b, channels, h, w]))
    }

    /// The gradient of `weight` `[O, C, 1, 1]`, given the input `x` and the output's gradient.
    fn pointwise_conv_weight_grad(x: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        batched_weight_grad::<Self>(x, grad)
    }
}

/// Burn's way: a batch of products `dY_b · X_bᵀ`, `[B, O, C]`, summed over the batch.
fn batched_weight_grad<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>) -> FloatTensor<B> {
    let [out, channels] = [grad.shape()[1], x.shape()[1]];
    let x_t = B::float_swap_dims(flat::<B>(x), 1, 2);
    let per_sample = B::float_matmul(flat::<B>(grad), x_t);
    B::float_reshape(B::float_sum_dim(per_sample, 0), Shape::new([out, channels, 1, 1]))
}

#[cfg(feature = "ndarray")]
impl PointwiseBackend for NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl PointwiseBackend for burn::backend::Cube {}

impl PointwiseBackend for Flex {
    fn pointwise_conv_weight_grad(x: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let (Some(xs), Some(grads)) = (x.as_slice::<f32>(), grad.as_slice::<f32>()) else {
            return batched_weight_grad::<Self>(x, grad);
        };
        let [batch, channels, height, width] = x.shape().dims();
        let out = grad.shape()[1];
        let plane = height * width;
        // Parts of a fixed size rather than one per thread, so that the partition, and with it the
        // order of the sums, does not depend on how many threads there are.
        let parts = batch.div_ceil(SAMPLES_PER_PART);
        let partials: Vec<Vec<f32>> = (0..parts)
            .into_par_iter()
            .map(|part| {
                let mut sum = vec![0.0f32; out * channels];
                for b in (part * SAMPLES_PER_PART)..((part + 1) * SAMPLES_PER_PART).min(batch) {
                    let (g, x) = (
                        &grads[b * out * plane..][..out * plane],
                        &xs[b * channels * plane..][..channels * plane],
                    );
                    // SAFETY: `sum` is `[out, channels]` row-major, `g` is `[out, plane]`
                    // row-major and `x` `[channels, plane]` row-major, read as its transpose
                    // `[plane, channels]` (row stride 1, column stride `plane`); all in bounds.
                    unsafe {
                        gemm::gemm(
                            out,
                            channels,
                            plane,
                            sum.as_mut_ptr(),
                            1,
                            channels as isize,
                            true,
                            g.as_ptr(),
                            1,
                            plane as isize,
                            x.as_ptr(),
                            plane as isize,
                            1,
                            1.0,
                            1.0,
                            false,
                            false,
                            false,
                            gemm::Parallelism::None,
                        );
                    }
                }
                sum
            })
            .collect();
        let mut total = vec![0.0f32; out * channels];
        for partial in &partials {
            for (t, p) in total.iter_mut().zip(partial) {
                *t += p;
            }
        }
        FlexTensor::from_data(TensorData::new(total, [out, channels, 1, 1]))
    }
}

impl<B: Backend + PointwiseBackend, C: CheckpointStrategy> PointwiseBackend for Autodiff<B, C> {
    fn pointwise_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        conv_with_backward::<B, C>(
            x,
            weight,
            B::pointwise_conv,
            |x, _, grad| B::pointwise_conv_weight_grad(x, grad),
            |_, weight, grad| B::pointwise_conv_input_grad(weight, grad),
        )
    }
}

/// Whether `conv` is a 1x1 conv with stride 1, no padding and no bias: what [`PointwiseBackend`]
/// computes.
pub(crate) fn is_pointwise(conv: &Conv2d) -> bool {
    conv.kernel_size == [1, 1]
        && conv.bias.is_none()
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && matches!(
            conv.padding,
            PaddingConfig2d::Valid | PaddingConfig2d::Explicit(0, 0, 0, 0)
        )
}

/// `conv.forward(x)`; while the weight of a 1x1 conv ([`is_pointwise`]) is being trained, through
/// [`PointwiseBackend`] (the same numbers, a faster backward).
pub(crate) fn pointwise(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    conv_or_kernel(
        conv,
        x,
        is_pointwise(conv),
        <Dispatch as PointwiseBackend>::pointwise_conv,
    )
}

#[cfg(test)]
mod tests {
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    use super::*;
    use crate::kernels::tests::{assert_matches_conv, finite_difference_check};

    #[test]
    fn forward_and_both_gradients_match_burns_conv() {
        let device = Device::flex().autodiff();
        // Batches of one part, of two equal parts and of a short last part; non-square maps catch
        // swapped height and width.
        for (seed, shape, out) in [(1, [2, 5, 4, 3], 6), (2, [64, 32, 6, 6], 16), (3, [40, 4, 3, 5], 8)] {
            device.seed(seed);
            let conv = Conv2dConfig::new([shape[1], out], [1, 1])
                .with_bias(false)
                .init(&device);
            assert!(is_pointwise(&conv), "the test must take the kernel's path");
            assert_matches_conv(&conv, shape, pointwise);
        }
    }

    #[test]
    fn inference_keeps_the_conv() {
        let device = Device::flex();
        let conv = Conv2dConfig::new([3, 4], [1, 1]).with_bias(false).init(&device);
        let x = Tensor::<4>::random([2, 3, 2, 2], Distribution::Normal(0.0, 1.0), &device);
        let same = (pointwise(&conv, x.clone()) - conv.forward(x)).abs().max();
        assert_eq!(same.into_scalar::<f32>(), 0.0);
    }

    #[test]
    fn gradients_match_finite_differences() {
        let device = Device::flex().autodiff();
        device.seed(14);
        let random = |n: usize| Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
        let (x, weight, r) = (random(60), random(12), random(80).reshape([5, 4, 2, 2]));
        finite_difference_check(&[x, weight], |inputs| {
            let output = <Dispatch as PointwiseBackend>::pointwise_conv(
                inputs[0].clone().reshape([5, 3, 2, 2]).into_dispatch(),
                inputs[1].clone().reshape([4, 3, 1, 1]).into_dispatch(),
            );
            (Tensor::<4>::from_dispatch(output) * r.clone()).sum()
        });
    }
}
