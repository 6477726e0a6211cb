//! The stem: a 3x3 conv (stride 1, padding 1, no bias) over a one-channel image, computed
//! directly, forward and both gradients.
//!
//! Replaces `Conv2d::forward` for the network's first conv while it trains. Burn 0.22's flex
//! backend runs every conv through im2col and a gemm; with one input channel the gemm's inner
//! dimension is 9, too short for its blocking to pay, and the weight gradient goes through the
//! generic conv backward (`fer-train bench --ops`: 17 ms forward and 41 ms backward at batch 64
//! for 9 × 32 weights). Here each output plane is nine shifted, scaled row additions of its input
//! plane (parallel over planes), the weight gradient nine dot products per output channel
//! (parallel over channels, each sum in a fixed order, so training stays deterministic), and the
//! input gradient the same correlation with the flipped kernels, summed over channels. Inference
//! and export keep `Conv2d`.

// See kernels/separable.rs: the ndarray backend stays routable for `--backend ndarray`.
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

use super::separable::tap_product;
use super::{MIN_PARALLEL_ELEMENTS, Planes, conv_or_kernel, conv_with_backward, zeroed};

/// Stride 1, padding 1, one group.
fn options() -> ConvOptions<2> {
    ConvOptions::new([1, 1], [1, 1], [1, 1], 1)
}

/// The 3x3 conv over one input channel with its own backward pass.
#[backend_extension(
    Flex,
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait StemConvBackend: Backend {
    /// `x` `[B, 1, H, W]` convolved with `weight` `[C, 1, 3, 3]`: `[B, C, H, W]`.
    fn stem_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::conv2d(x, weight, None, options())
    }

    /// The gradient of `weight`, given the output's gradient `grad`.
    fn stem_conv_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, grad, options())
    }

    /// The gradient of `x`, given the output's gradient `grad`.
    fn stem_conv_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, grad, options())
    }
}

#[cfg(feature = "ndarray")]
impl StemConvBackend for NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl StemConvBackend for burn::backend::Cube {}

/// `out[y, x] += Σ_{i,j} kernel[3i + j] · input[y + i − 1, x + j − 1]` over one plane, zero outside.
fn correlate_add(out: &mut [f32], input: &[f32], kernel: &[f32], height: usize, width: usize) {
    if width == 0 {
        return;
    }
    for y in 0..height {
        let out_row = &mut out[y * width..][..width];
        for i in 0..3 {
            let Some(source) = (y + i).checked_sub(1).filter(|&s| s < height) else {
                continue;
            };
            let row = &input[source * width..][..width];
            let [left, centre, right] = [kernel[3 * i], kernel[3 * i + 1], kernel[3 * i + 2]];
            for (o, &v) in out_row[1..].iter_mut().zip(&row[..width - 1]) {
                *o += left * v;
            }
            for (o, &v) in out_row.iter_mut().zip(row) {
                *o += centre * v;
            }
            for (o, &v) in out_row[..width - 1].iter_mut().zip(&row[1..]) {
                *o += right * v;
            }
        }
    }
}

/// The f32 slices of contiguous tensors, or `None` for another dtype.
fn slices<const N: usize>(tensors: &[FlexTensor; N]) -> Option<[&[f32]; N]> {
    let slices: Vec<&[f32]> = tensors.iter().map(|t| t.as_slice::<f32>()).collect::<Option<_>>()?;
    slices.try_into().ok()
}

impl StemConvBackend for Flex {
    fn stem_conv(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
        let tensors = [x.to_contiguous(), weight.to_contiguous()];
        let Some([xs, ws]) = slices(&tensors) else {
            let [x, weight] = tensors;
            return Self::conv2d(x, weight, None, options());
        };
        let [batch, _, height, width] = tensors[0].shape().dims();
        let channels = tensors[1].shape()[0];
        let plane = height * width;
        let out = Planes::new(batch * channels, plane);
        (0..batch * channels)
            .into_par_iter()
            .with_min_len(MIN_PARALLEL_ELEMENTS.div_ceil(plane.max(1)))
            .for_each(|p| {
                let (b, c) = (p / channels, p % channels);
                // SAFETY: plane p belongs to this task alone.
                let plane_out = zeroed(unsafe { out.plane(p) });
                correlate_add(plane_out, &xs[b * plane..][..plane], &ws[c * 9..][..9], height, width);
            });
        // SAFETY: each task zeroed its whole plane before accumulating into it.
        let out = unsafe { out.finish() };
        FlexTensor::from_data(TensorData::new(out, [batch, channels, height, width]))
    }

    fn stem_conv_weight_grad(x: FlexTensor, weight: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let tensors = [x.to_contiguous(), grad.to_contiguous()];
        let Some([xs, grads]) = slices(&tensors) else {
            let [x, grad] = tensors;
            return Self::conv2d_weight_backward(x, weight, grad, options());
        };
        let [batch, channels, height, width] = tensors[1].shape().dims();
        let plane = height * width;
        let mut out = vec![0.0f32; channels * 9];
        out.par_chunks_mut(9).enumerate().for_each(|(c, kernel)| {
            for b in 0..batch {
                let (x, g) = (&xs[b * plane..][..plane], &grads[(b * channels + c) * plane..][..plane]);
                for (tap, sum) in kernel.iter_mut().enumerate() {
                    *sum += tap_product(x, g, height, width, tap / 3, tap % 3);
                }
            }
        });
        FlexTensor::from_data(TensorData::new(out, [channels, 1, 3, 3]))
    }

    fn stem_conv_input_grad(x: FlexTensor, weight: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let tensors = [weight.to_contiguous(), grad.to_contiguous()];
        let Some([ws, grads]) = slices(&tensors) else {
            let [weight, grad] = tensors;
            return Self::conv2d_x_backward(x, weight, grad, options());
        };
        let [batch, channels, height, width] = tensors[1].shape().dims();
        let plane = height * width;
        // A stride-1, padding-1 transposed conv is the conv with each kernel flipped.
        let flipped: Vec<f32> = ws.chunks(9).flat_map(|k| k.iter().rev().copied()).collect();
        let mut out = vec![0.0f32; batch * plane];
        out.par_chunks_mut(plane.max(1)).enumerate().for_each(|(b, out)| {
            for c in 0..channels {
                let grad = &grads[(b * channels + c) * plane..][..plane];
                correlate_add(out, grad, &flipped[c * 9..][..9], height, width);
            }
        });
        FlexTensor::from_data(TensorData::new(out, [batch, 1, height, width]))
    }
}

impl<B: Backend + StemConvBackend, C: CheckpointStrategy> StemConvBackend for Autodiff<B, C> {
    fn stem_conv(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        conv_with_backward::<B, C>(
            x,
            weight,
            B::stem_conv,
            B::stem_conv_weight_grad,
            B::stem_conv_input_grad,
        )
    }
}

/// Whether `conv` is a 3x3 conv over one input channel with stride 1, padding 1 and no bias: what
/// [`StemConvBackend`] computes.
pub(crate) fn is_stem(conv: &Conv2d) -> bool {
    let [_, inputs, ..] = conv.weight.dims();
    inputs == 1
        && conv.kernel_size == [3, 3]
        && conv.bias.is_none()
        && conv.stride == [1, 1]
        && conv.dilation == [1, 1]
        && conv.groups == 1
        && conv.padding == PaddingConfig2d::Explicit(1, 1, 1, 1)
}

/// `conv.forward(x)`; while the weight of a stem conv ([`is_stem`]) is being trained, through
/// [`StemConvBackend`].
pub(crate) fn stem_conv(conv: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    conv_or_kernel(conv, x, is_stem(conv), <Dispatch as StemConvBackend>::stem_conv)
}

#[cfg(test)]
mod tests {
    use burn::nn::conv::Conv2dConfig;
    use burn::tensor::Distribution;

    use super::*;
    use crate::kernels::tests::{assert_matches_conv, finite_difference_check};

    fn stem(channels: usize, device: &Device) -> Conv2d {
        Conv2dConfig::new([1, channels], [3, 3])
            .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
            .with_bias(false)
            .init(device)
    }

    #[test]
    fn forward_and_both_gradients_match_burns_conv() {
        let device = Device::flex().autodiff();
        // Non-square maps catch swapped height and width; a one-pixel side has no neighbours.
        for (seed, shape, channels) in [
            (1, [2, 1, 5, 4], 3),
            (2, [3, 1, 1, 6], 2),
            (3, [2, 1, 6, 1], 2),
            (4, [2, 1, 2, 2], 3),
            (5, [8, 1, 48, 48], 32),
        ] {
            device.seed(seed);
            let conv = stem(channels, &device);
            assert!(is_stem(&conv), "the test must take the kernel's path");
            assert_matches_conv(&conv, shape, stem_conv);
        }
    }

    #[test]
    fn gradients_match_finite_differences() {
        let device = Device::flex().autodiff();
        device.seed(13);
        let random = |n: usize| Tensor::<1>::random([n], Distribution::Normal(0.0, 1.0), &device);
        let (x, weight, r) = (random(40), random(18), random(80).reshape([2, 2, 4, 5]));
        finite_difference_check(&[x, weight], |inputs| {
            let output = <Dispatch as StemConvBackend>::stem_conv(
                inputs[0].clone().reshape([2, 1, 4, 5]).into_dispatch(),
                inputs[1].clone().reshape([2, 1, 3, 3]).into_dispatch(),
            );
            (Tensor::<4>::from_dispatch(output) * r.clone()).sum()
        });
    }
}
