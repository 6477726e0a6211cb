//! The depthwise 3x3 conv of a separable block, with a backward pass of its own for training. It
//! computes the same numbers as `Conv2d`, and inference and export keep `Conv2d`.
//!
//! Burn 0.22's flex backend has a fast, parallel depthwise forward kernel, but no depthwise
//! backward: autodiff falls back on Burn's generic conv gradients, a grouped transposed conv for
//! the input (a tiny gemm per batch × channel) and one single-threaded conv per channel for the
//! weights. `fer-train bench --ops` measured those at 10–76 ms per layer against 2–5 ms forward.
//! Here the input gradient is the same depthwise forward kernel run on the flipped kernel (what a
//! stride-1, padding-1 transposed conv is), and the weight gradient a direct loop, parallel over
//! channels (each channel's sum in a fixed order, so training stays deterministic). The op is a
//! Burn backend extension: flex gets the fast weight gradient; other backends (ndarray, with the
//! `ndarray` feature) keep Burn's own.

// The deprecated ndarray backend stays selectable for comparison (`--backend ndarray`), so the
// extension must route it too; the macro's generated code names it in places no item-level
// `allow` reaches.
#![cfg_attr(feature = "ndarray", allow(deprecated))]

#[cfg(feature = "ndarray")]
use burn::backend::NdArray;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ConvOptions, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, Dispatch, Flex, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;
use rayon::prelude::*;

use super::{LANES, conv_or_kernel, conv_with_backward};

/// Stride 1, padding 1, one group per channel.
fn options(channels: usize) -> ConvOptions<2> {
    ConvOptions::new([1, 1], [1, 1], [1, 1], channels)
}

/// The depthwise 3x3 convolution as a backend operation with its own backward pass.
#[backend_extension(
    Flex,
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait DepthwiseBackend: Backend {
    /// `x` `[B, C, H, W]` convolved with one 3x3 kernel per channel, `weight` `[C, 1, 3, 3]`.
    fn depthwise3x3(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let channels = weight.shape()[0];
        Self::conv2d(x, weight, None, options(channels))
    }

    /// The gradient of the loss with respect to `weight`, given the output's gradient `grad`.
    fn depthwise3x3_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let channels = weight.shape()[0];
        Self::conv2d_weight_backward(x, weight, grad, options(channels))
    }
}

#[cfg(feature = "ndarray")]
impl DepthwiseBackend for NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl DepthwiseBackend for burn::backend::Cube {}

impl DepthwiseBackend for Flex {
    fn depthwise3x3_weight_grad(x: FlexTensor, weight: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let [batch, channels, height, width] = x.shape().dims();
        let x = x.to_contiguous();
        let grad = grad.to_contiguous();
        let (x, grad) = match (x.as_slice::<f32>(), grad.as_slice::<f32>()) {
            (Some(x), Some(grad)) => (x, grad),
            _ => return Self::conv2d_weight_backward(x, weight, grad, options(channels)),
        };
        let plane = height * width;
        let mut out = vec![0.0f32; channels * 9];
        out.par_chunks_mut(9).enumerate().for_each(|(c, kernel)| {
            for b in 0..batch {
                let offset = (b * channels + c) * plane;
                let (x, g) = (&x[offset..offset + plane], &grad[offset..offset + plane]);
                for (tap, sum) in kernel.iter_mut().enumerate() {
                    *sum += tap_product(x, g, height, width, tap / 3, tap % 3);
                }
            }
        });
        FlexTensor::from_data(TensorData::new(out, [channels, 1, 3, 3]))
    }
}

/// `Σ_{y,x} g[y, x] · x[y + i − 1, x + j − 1]` over one channel plane, zero outside it.
///
/// One dot product over the plane's rows taken as a single flat run, so that it vectorises even
/// on 6-pixel rows: in flat indexing `g[p]` pairs with `x[p + (i − 1)·width + j − 1]`, which is
/// right everywhere but at the row ends, where a shifted column wraps into the next or previous
/// row; those few pairs are subtracted again.
pub(super) fn tap_product(x: &[f32], g: &[f32], height: usize, width: usize, i: usize, j: usize) -> f32 {
    let rows = (1usize.saturating_sub(i))..(height + 1).saturating_sub(i).min(height);
    if rows.is_empty() || width == 0 {
        return 0.0;
    }
    let offset = (i as isize - 1) * width as isize + j as isize - 1;
    let first = (rows.start * width).max((-offset).max(0) as usize);
    let last = (rows.end * width).min(((height * width) as isize - offset) as usize);
    let source = |p: usize| (p as isize + offset) as usize;
    let mut sum = dot(&g[first..last], &x[source(first)..source(last)]);
    let wrapped_column = match j {
        0 => 0,
        2 => width - 1,
        _ => return sum,
    };
    for y in rows {
        let p = y * width + wrapped_column;
        if (first..last).contains(&p) {
            sum -= g[p] * x[source(p)];
        }
    }
    sum
}

/// `Σ a[k]·b[k]` in [`LANES`] independent partial sums.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let (a_chunks, a_rest) = a.as_chunks::<LANES>();
    let (b_chunks, b_rest) = b.as_chunks::<LANES>();
    let mut sums = [0.0f32; LANES];
    for (a, b) in a_chunks.iter().zip(b_chunks) {
        for lane in 0..LANES {
            sums[lane] += a[lane] * b[lane];
        }
    }
    sums.iter().sum::<f32>() + a_rest.iter().zip(b_rest).map(|(a, b)| a * b).sum::<f32>()
}

impl<B: Backend + DepthwiseBackend, C: CheckpointStrategy> DepthwiseBackend for Autodiff<B, C> {
    fn depthwise3x3(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        conv_with_backward::<B, C>(
            x,
            weight,
            B::depthwise3x3,
            B::depthwise3x3_weight_grad,
            // A stride-1, padding-1 transposed conv is the conv with the kernel flipped.
            |_, weight, grad| B::depthwise3x3(grad, B::float_flip(weight, &[2, 3])),
        )
    }
}

/// Whether `conv` is a depthwise 3x3 conv with stride 1, padding 1 and no bias: what
/// [`DepthwiseBackend`] computes.
pub(crate) fn is_depthwise3x3(conv: &Conv2d) -> bool {
    let [channels, per_group, ..] = conv.weight.dims();
    per_group == 1
        && conv.groups == channels
        && conv.kernel_size == [3, 3]
        && conv.bias.is_none()
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.padding == PaddingConfig2d::Explicit(1, 1, 1, 1)
}

/// `conv.forward(x)`; while the weight of a depthwise 3x3 conv ([`is_depthwise3x3`]) is being
/// trained, through [`DepthwiseBackend`] (same numbers as the conv, a faster backward).
pub(crate) fn depthwise(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    conv_or_kernel(
        conv,
        x,
        is_depthwise3x3(conv),
        <Dispatch as DepthwiseBackend>::depthwise3x3,
    )
}

#[cfg(test)]
mod tests {
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    use super::*;
    use crate::kernels::tests::{assert_matches_conv, finite_difference_check};

    fn depthwise_conv(channels: usize, device: &Device) -> Conv2d {
        Conv2dConfig::new([channels, channels], [3, 3])
            .with_groups(channels)
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init(device)
    }

    #[test]
    fn forward_and_both_gradients_match_the_grouped_conv() {
        let device = Device::flex().autodiff();
        // A non-square map catches swapped height and width; one-pixel rows and columns and 2x2
        // maps are where every tap's row wraps.
        for (seed, shape) in [
            (5, [2, 3, 5, 4]),
            (6, [1, 2, 7, 1]),
            (7, [2, 2, 1, 6]),
            (8, [3, 4, 2, 2]),
            (9, [2, 1, 1, 1]),
            (10, [4, 16, 12, 12]),
        ] {
            device.seed(seed);
            let conv = depthwise_conv(shape[1], &device);
            assert!(is_depthwise3x3(&conv), "the test must take the kernel's path");
            assert_matches_conv(&conv, shape, depthwise);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let device = Device::flex().autodiff();
        device.seed(15);
        let random = |n: usize| Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
        let (x, weight, r) = (random(40), random(18), random(40).reshape([2, 2, 2, 5]));
        finite_difference_check(&[x, weight], |inputs| {
            let output = <Dispatch as DepthwiseBackend>::depthwise3x3(
                inputs[0].clone().reshape([2, 2, 2, 5]).into_dispatch(),
                inputs[1].clone().reshape([2, 1, 3, 3]).into_dispatch(),
            );
            (Tensor::<4>::from_dispatch(output) * r.clone()).sum()
        });
    }
}
