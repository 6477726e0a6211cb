//! The 2x2, stride-2 max-pool for training: a forward pass that keeps each window's argmax in
//! one byte, and a backward pass that scatters the gradient there.
//!
//! Replaces `MaxPool2d::forward` while the network trains. Burn 0.22's flex backend pools through
//! its general 3-D kernel (any size, stride, padding and dilation), one output at a time with the
//! window's bounds worked out per element, and keeps the argmax as an `i64` flat index per output;
//! at the stem's 48x48 maps that took 37 ms forward and 23 ms backward (`fer-train bench --ops`,
//! batch 64). Here a 2x2 window is read as two pairs from two rows, the argmax is a byte (0–3,
//! row-major in the window), and the backward writes each gradient to its window's winner, zero
//! elsewhere. Both are parallel over planes. Ties go to the first maximum in row-major order and
//! the last NaN wins its window, as in Burn; a map with an odd side drops its last row or column,
//! as `floor` does. Inference and export keep `MaxPool2d`.

// See kernels/separable.rs: the ndarray backend stays routable for `--backend ndarray`.
#![cfg_attr(feature = "ndarray", allow(deprecated))]

#[cfg(feature = "ndarray")]
use burn::backend::NdArray;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Autodiff, Backend, Dispatch, Flex, IntDType, TensorMetadata, backend_extension};
use burn::nn::PaddingConfig2d;
use burn::nn::pool::MaxPool2d;
use burn::prelude::*;
use rayon::prelude::*;

use super::{MIN_PARALLEL_ELEMENTS, Planes, zeroed};

const WINDOW: [usize; 2] = [2, 2];

/// The 2x2, stride-2 max-pool with its own backward pass.
#[backend_extension(
    Flex,
    NdArray: cfg(feature = "ndarray"),
    Cube: cfg(any(feature = "wgpu", feature = "cuda")),
    Autodiff
)]
pub trait MaxPoolBackend: Backend {
    /// The maximum of each 2x2 window of `x` `[B, C, H, W]`, `[B, C, H/2, W/2]`, and where each
    /// was found, in a form only [`MaxPoolBackend::max_pool2x2_backward`] reads.
    fn max_pool2x2(x: FloatTensor<Self>) -> (FloatTensor<Self>, IntTensor<Self>) {
        burn_forward::<Self>(x)
    }

    /// The gradient of `x`, `[B, C, H, W]`, given the gradient `grad` of the pooled output and
    /// the argmax the forward pass returned.
    fn max_pool2x2_backward(
        x: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        argmax: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        burn_backward::<Self>(x, grad, argmax)
    }
}

/// Burn's own max-pool: the reference, and the path of every backend without the kernels.
/// Indices as 32-bit integers, which every backend has (GPU shaders may lack 64-bit ones; on
/// wgpu with 64-bit indices the backward pass sent the gradient to the wrong elements).
fn burn_forward<B: Backend>(x: FloatTensor<B>) -> (FloatTensor<B>, IntTensor<B>) {
    let pooled = B::max_pool2d_with_indices(x, WINDOW, WINDOW, [0, 0], [1, 1], false, IntDType::I32);
    (pooled.output, pooled.indices)
}

/// Burn's own backward of [`burn_forward`].
fn burn_backward<B: Backend>(x: FloatTensor<B>, grad: FloatTensor<B>, indices: IntTensor<B>) -> FloatTensor<B> {
    B::max_pool2d_with_indices_backward(x, WINDOW, WINDOW, [0, 0], [1, 1], false, grad, indices).x_grad
}

#[cfg(feature = "ndarray")]
impl MaxPoolBackend for NdArray {}

#[cfg(any(feature = "wgpu", feature = "cuda"))]
impl MaxPoolBackend for burn::backend::Cube {}

/// Output rows and columns of a 2x2, stride-2 pool over `[B, C, H, W]`, and the planes.
fn geometry(shape: &burn::backend::Shape) -> (usize, usize, usize, usize, usize) {
    let [batch, channels, height, width] = shape.dims();
    (batch * channels, height, width, height / 2, width / 2)
}

impl MaxPoolBackend for Flex {
    fn max_pool2x2(x: FlexTensor) -> (FlexTensor, FlexTensor) {
        let x = x.to_contiguous();
        let Some(xs) = x.as_slice::<f32>() else {
            return burn_forward::<Self>(x);
        };
        let shape = x.shape();
        let (planes, height, width, out_h, out_w) = geometry(&shape);
        let (plane, out_plane) = (height * width, out_h * out_w);
        let (out, argmax) = (Planes::new(planes, out_plane), Planes::new(planes, out_plane));
        (0..planes)
            .into_par_iter()
            .with_min_len(MIN_PARALLEL_ELEMENTS.div_ceil(plane.max(1)))
            .for_each(|p| {
                let input = &xs[p * plane..][..plane];
                // SAFETY: plane p belongs to this task alone.
                let (out, argmax) = unsafe { (out.plane(p), argmax.plane(p)) };
                for oy in 0..out_h {
                    let (top, bottom) = (
                        &input[2 * oy * width..][..width],
                        &input[(2 * oy + 1) * width..][..width],
                    );
                    let row = oy * out_w..(oy + 1) * out_w;
                    for ((ox, y), a) in out[row.clone()].iter_mut().enumerate().zip(&mut argmax[row]) {
                        let (best, at) = window_max(top[2 * ox], top[2 * ox + 1], bottom[2 * ox], bottom[2 * ox + 1]);
                        y.write(best);
                        a.write(at);
                    }
                }
            });
        // SAFETY: each task wrote every output of its plane.
        let (out, argmax) = unsafe { (out.finish(), argmax.finish()) };
        let [batch, channels, ..] = shape.dims::<4>();
        (
            FlexTensor::from_data(TensorData::new(out, [batch, channels, out_h, out_w])),
            FlexTensor::from_data(TensorData::new(argmax, [batch, channels, out_h, out_w])),
        )
    }

    fn max_pool2x2_backward(x: FlexTensor, grad: FlexTensor, argmax: FlexTensor) -> FlexTensor {
        let (grad, argmax) = (grad.to_contiguous(), argmax.to_contiguous());
        let (Some(grads), Some(argmax)) = (grad.as_slice::<f32>(), argmax.as_slice::<u8>()) else {
            return burn_backward::<Self>(x, grad, argmax);
        };
        let shape = x.shape();
        let (planes, height, width, out_h, out_w) = geometry(&shape);
        let (plane, out_plane) = (height * width, out_h * out_w);
        let out = Planes::new(planes, plane);
        (0..planes)
            .into_par_iter()
            .with_min_len(MIN_PARALLEL_ELEMENTS.div_ceil(plane.max(1)))
            .for_each(|p| {
                let (grads, argmax) = (
                    &grads[p * out_plane..][..out_plane],
                    &argmax[p * out_plane..][..out_plane],
                );
                // SAFETY: plane p belongs to this task alone.
                let out = zeroed(unsafe { out.plane(p) });
                for oy in 0..out_h {
                    for ox in 0..out_w {
                        let k = argmax[oy * out_w + ox] as usize;
                        out[(2 * oy + k / 2) * width + 2 * ox + k % 2] = grads[oy * out_w + ox];
                    }
                }
            });
        // SAFETY: each task zeroed its whole plane before scattering into it.
        let out = unsafe { out.finish() };
        FlexTensor::from_data(TensorData::new(out, shape))
    }
}

/// The maximum of a 2x2 window `[[a, b], [c, d]]` and its place (0–3, row-major): the first
/// maximum, or the last NaN. Written as pairwise selects, not a loop of comparisons, which on
/// activations branches unpredictably.
#[inline(always)]
fn window_max(a: f32, b: f32, c: f32, d: f32) -> (f32, u8) {
    let wins = |challenger: f32, holder: f32| challenger > holder || challenger.is_nan();
    let (top, top_at) = if wins(b, a) { (b, 1) } else { (a, 0) };
    let (bottom, bottom_at) = if wins(d, c) { (d, 3) } else { (c, 2) };
    if wins(bottom, top) {
        (bottom, bottom_at)
    } else {
        (top, top_at)
    }
}

impl<B: Backend + MaxPoolBackend, C: CheckpointStrategy> MaxPoolBackend for Autodiff<B, C> {
    fn max_pool2x2(x: FloatTensor<Self>) -> (FloatTensor<Self>, IntTensor<Self>) {
        #[derive(Debug)]
        struct MaxPoolBackward;

        impl<B: Backend + MaxPoolBackend> Backward<B, 1> for MaxPoolBackward {
            /// The input (for its shape) and the argmax.
            type State = (FloatTensor<B>, IntTensor<B>);

            fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
                let [node_x] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x, argmax) = ops.state;
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, B::max_pool2x2_backward(x, grad, argmax));
                }
            }
        }

        let (x, x_node) = x.into_parts();
        let (output, argmax) = B::max_pool2x2(x.clone());
        let output = match MaxPoolBackward.prepare::<C>([x_node]).compute_bound().stateful() {
            OpsKind::Tracked(prep) => prep.finish((x, argmax.clone()), output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        };
        (output, argmax)
    }
}

/// Whether `pool` is a 2x2, stride-2 max-pool without padding, rounding down: what
/// [`MaxPoolBackend`] computes.
pub(crate) fn is_pool2x2(pool: &MaxPool2d) -> bool {
    pool.kernel_size == WINDOW
        && pool.stride == WINDOW
        && pool.dilation == [1, 1]
        && pool.padding == PaddingConfig2d::Valid
        && !pool.ceil_mode
}

/// `pool.forward(x)`; for a 2x2 pool ([`is_pool2x2`]) while training (an autodiff device), through
/// [`MaxPoolBackend`].
pub(crate) fn max_pool2x2(pool: &MaxPool2d, x: Tensor<4>) -> Tensor<4> {
    if !is_pool2x2(pool) || !x.device().is_autodiff() {
        return pool.forward(x);
    }
    let (output, _) = <Dispatch as MaxPoolBackend>::max_pool2x2(x.into_dispatch());
    Tensor::from_dispatch(output)
}

#[cfg(test)]
mod tests {
    use burn::nn::pool::MaxPool2dConfig;
    use burn::tensor::Distribution;

    use super::*;
    use crate::kernels::tests::{assert_close, finite_difference_check};

    #[test]
    fn matches_burns_max_pool_on_random_shapes() {
        let device = Device::flex().autodiff();
        let pool = MaxPool2dConfig::new(WINDOW).init();
        assert!(is_pool2x2(&pool), "the test must take the kernel's path");
        // Odd sides (the last row or column is dropped), non-square maps, one plane, many planes.
        for (seed, shape) in [
            (1, [2, 3, 6, 8]),
            (2, [1, 1, 5, 7]),
            (3, [4, 16, 12, 12]),
            (4, [3, 2, 2, 9]),
        ] {
            device.seed(seed);
            let random = |s: [usize; 4]| Tensor::<4>::random(s, Distribution::Normal(0.0, 1.0), &device);
            let x = random(shape);
            let run = |fast: bool| {
                let x = x.clone().require_grad();
                let y = if fast {
                    max_pool2x2(&pool, x.clone())
                } else {
                    pool.forward(x.clone())
                };
                let r = Tensor::<4>::ones(y.dims(), &device) + y.clone().detach();
                let grads = (y.clone() * r).sum().backward();
                let vec = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
                (vec(y), vec(x.grad(&grads).unwrap()))
            };
            let ((y, dx), (y_ref, dx_ref)) = (run(true), run(false));
            assert_close(&y, &y_ref, 0.0, &format!("output of {shape:?}"));
            assert_close(&dx, &dx_ref, 0.0, &format!("input gradient of {shape:?}"));
        }
    }

    #[test]
    fn ties_and_nans_choose_as_burn_does() {
        let device = Device::flex().autodiff();
        let pool = MaxPool2dConfig::new(WINDOW).init();
        // Ties go to the first maximum (row-major); a NaN wins its window, the last of several.
        for (window, winner) in [
            ([[1.0, 3.0], [3.0, 3.0]], 1),
            ([[f32::NAN, 1.0], [f32::NAN, 0.0]], 2),
            ([[2.0, f32::NAN], [5.0, 1.0]], 1),
            ([[0.0, 0.0], [0.0, 0.0]], 0),
        ] {
            let gradient = |fast: bool| {
                let x = Tensor::<4>::from_floats([[window]], &device).require_grad();
                let y = if fast {
                    max_pool2x2(&pool, x.clone())
                } else {
                    pool.forward(x.clone())
                };
                let grads = y.sum().backward();
                x.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap()
            };
            let mut expected = [0.0; 4];
            expected[winner] = 1.0;
            assert_eq!(gradient(false), expected, "Burn on {window:?}");
            assert_eq!(gradient(true), expected, "the kernel on {window:?}");
        }
    }

    #[test]
    fn gradient_matches_finite_differences() {
        let device = Device::flex().autodiff();
        device.seed(12);
        let shape = [2, 2, 4, 6];
        let x = Tensor::<1>::random([96], Distribution::Normal(0.0, 1.0), &device);
        let r = Tensor::<4>::random([2, 2, 2, 3], Distribution::Normal(0.0, 1.0), &device);
        finite_difference_check(&[x], |inputs| {
            let (output, _) =
                <Dispatch as MaxPoolBackend>::max_pool2x2(inputs[0].clone().reshape(shape).into_dispatch());
            (Tensor::<4>::from_dispatch(output) * r.clone()).sum()
        });
    }
}
