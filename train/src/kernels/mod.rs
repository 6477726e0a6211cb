//! The training step's kernels for Burn's flex backend: operations whose forward and backward
//! passes Burn composes from generic tensor ops (many passes over memory, often on one core),
//! written here as Burn backend extensions with backward passes of their own.
//!
//! Each computes the same numbers as the Burn ops it replaces (its tests compare outputs,
//! gradients and running statistics, and check gradients against finite differences), is
//! parallel and deterministic, and is used only while training: inference and export keep
//! Burn's modules, which the ONNX export folds and quantizes. Other backends (ndarray, wgpu and
//! cuda, with the features of those names) keep Burn's own ops through each extension's default
//! methods.

mod batch_norm;
mod max_pool;
mod pointwise;
mod separable;
mod stem;

pub(crate) use batch_norm::batch_norm_relu;
pub(crate) use max_pool::max_pool2x2;
pub(crate) use pointwise::pointwise;
pub(crate) use separable::depthwise;
pub(crate) use stem::stem_conv;

use std::mem::MaybeUninit;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::tensor::FloatTensor;
use burn::backend::{Autodiff, Backend, DispatchTensor};
use burn::nn::conv::Conv2d;
use burn::prelude::*;

/// Independent partial sums per reduction, a multiple of every x86 and ARM f32 vector width: the
/// compiler vectorises independent lanes, while a single running float sum it may not reorder
/// stays scalar.
const LANES: usize = 8;

/// The least work, in elements, worth handing to another thread: smaller planes (a 6x6 map is 36
/// elements) are grouped into tasks of at least this many.
const MIN_PARALLEL_ELEMENTS: usize = 16 * 1024;

/// A gradient of a conv-like op `y = f(x, weight)`: from `x`, `weight` and the output's gradient.
type ConvGrad<B> = fn(FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>;

/// The backward pass of a conv-like op: its weight's and its input's gradient.
#[derive(Debug)]
struct ConvBackward<B: Backend> {
    weight_grad: ConvGrad<B>,
    input_grad: ConvGrad<B>,
}

impl<B: Backend> Backward<B, 2> for ConvBackward<B> {
    /// The input and the weight.
    type State = (FloatTensor<B>, FloatTensor<B>);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x, weight) = ops.state;
        if let Some(node) = node_weight {
            grads.register::<B>(node.id, (self.weight_grad)(x.clone(), weight.clone(), grad.clone()));
        }
        if let Some(node) = node_x {
            grads.register::<B>(node.id, (self.input_grad)(x, weight, grad));
        }
    }
}

/// Runs the conv-like op `forward(x, weight)` on the inner backend and records it for autodiff
/// with the given gradients (what the conv kernels' `Autodiff` implementations share).
fn conv_with_backward<B: Backend, C: CheckpointStrategy>(
    x: FloatTensor<Autodiff<B, C>>,
    weight: FloatTensor<Autodiff<B, C>>,
    forward: fn(FloatTensor<B>, FloatTensor<B>) -> FloatTensor<B>,
    weight_grad: ConvGrad<B>,
    input_grad: ConvGrad<B>,
) -> FloatTensor<Autodiff<B, C>> {
    let (x, x_node) = x.into_parts();
    let (weight, weight_node) = weight.into_parts();
    let output = forward(x.clone(), weight.clone());
    let backward = ConvBackward {
        weight_grad,
        input_grad,
    };
    match backward.prepare::<C>([x_node, weight_node]).compute_bound().stateful() {
        OpsKind::Tracked(prep) => prep.finish((x, weight), output),
        OpsKind::UnTracked(prep) => prep.finish(output),
    }
}

/// `conv.forward(x)`, or, where `kernel_applies` to the conv and its weight is being trained, the
/// kernel `op` on `x` and the weight (what the conv kernels' wrappers share).
fn conv_or_kernel(
    conv: &Conv2d,
    x: Tensor<4>,
    kernel_applies: bool,
    op: fn(DispatchTensor, DispatchTensor) -> DispatchTensor,
) -> Tensor<4> {
    let weight = conv.weight.val();
    if !kernel_applies || !weight.is_require_grad() {
        return conv.forward(x);
    }
    Tensor::from_dispatch(op(x.into_dispatch(), weight.into_dispatch()))
}

/// An output buffer of `planes × plane` elements that parallel tasks write plane by plane, in any
/// order, without zeroing it first: a fresh `vec![0.0; n]` of activations is a memset of up to
/// 19 MB on the calling thread while the other core waits.
struct Planes<T> {
    buffer: Vec<T>,
    start: *mut MaybeUninit<T>,
    plane: usize,
    planes: usize,
}

// SAFETY: tasks on other threads only reach disjoint planes through `plane`, whose contract
// forbids handing out one plane twice.
unsafe impl<T: Send> Send for Planes<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for Planes<T> {}

impl<T> Planes<T> {
    /// `planes` planes of `plane` elements, uninitialised.
    fn new(planes: usize, plane: usize) -> Self {
        let mut buffer = Vec::with_capacity(planes * plane);
        let start = buffer.spare_capacity_mut().as_mut_ptr();
        Self {
            buffer,
            start,
            plane,
            planes,
        }
    }

    /// Plane `index`, to be written.
    ///
    /// # Safety
    ///
    /// No other reference to plane `index` may be alive while this one is.
    #[allow(clippy::mut_from_ref)]
    unsafe fn plane(&self, index: usize) -> &mut [MaybeUninit<T>] {
        assert!(index < self.planes, "plane {index} of {}", self.planes);
        // SAFETY: in bounds of the allocation (checked above); exclusive by the contract.
        unsafe { std::slice::from_raw_parts_mut(self.start.add(index * self.plane), self.plane) }
    }

    /// The written buffer.
    ///
    /// # Safety
    ///
    /// Every element of every plane must have been written.
    unsafe fn finish(mut self) -> Vec<T> {
        // SAFETY: the capacity is `planes × plane` and, by the contract, all of it is initialised.
        unsafe { self.buffer.set_len(self.planes * self.plane) };
        self.buffer
    }
}

/// Fills `out` with zeros and gives it back initialised.
fn zeroed(out: &mut [MaybeUninit<f32>]) -> &mut [f32] {
    out.fill(MaybeUninit::new(0.0));
    // SAFETY: every element was just written; `MaybeUninit<f32>` has `f32`'s layout.
    unsafe { &mut *(out as *mut [MaybeUninit<f32>] as *mut [f32]) }
}

#[cfg(test)]
pub(crate) mod tests {
    use burn::nn::conv::Conv2d;
    use burn::prelude::*;
    use burn::tensor::Distribution;

    /// Asserts that `fast(conv, x)` gives `conv.forward(x)`'s output, input gradient and weight
    /// gradient (under the loss `sum(y ⊙ r)`, `r` random) on a random `x` of `shape`.
    pub(crate) fn assert_matches_conv(conv: &Conv2d, shape: [usize; 4], fast: fn(&Conv2d, Tensor<4>) -> Tensor<4>) {
        let device = conv.weight.device();
        let x = Tensor::<4>::random(shape, Distribution::Normal(0.0, 1.0), &device);
        let r = Tensor::<4>::random(conv.forward(x.clone()).dims(), Distribution::Normal(0.0, 1.0), &device);
        let run = |kernel: bool| {
            let x = x.clone().require_grad();
            let y = if kernel {
                fast(conv, x.clone())
            } else {
                conv.forward(x.clone())
            };
            let grads = (y.clone() * r.clone()).sum().backward();
            let vec = |t: Tensor<4>| t.into_data().try_to_vec::<f32>().unwrap();
            [
                vec(y),
                vec(x.grad(&grads).unwrap()),
                vec(conv.weight.val().grad(&grads).unwrap()),
            ]
        };
        let (kernel, reference) = (run(true), run(false));
        for ((name, a), b) in ["output", "input gradient", "weight gradient"]
            .iter()
            .zip(&kernel)
            .zip(&reference)
        {
            assert_close(
                a,
                b,
                1e-4,
                &format!("{name} of {shape:?} through {:?}", conv.weight.dims()),
            );
        }
    }

    /// Asserts `|a − b| ≤ tolerance · (1 + |b| + rms(b))` element-wise, NaN matching only NaN.
    ///
    /// Both sides are long sums in different orders, whose rounding is relative to the size of
    /// the terms, not of the result: an element that cancels to near zero (a weight gradient
    /// summed over 18,432 products of unit size lands at 0.1 now and then) keeps the rounding
    /// of terms the size of the typical result, which the root mean square of `b` measures.
    pub(crate) fn assert_close(a: &[f32], b: &[f32], tolerance: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths differ");
        let finite = b.iter().filter(|v| v.is_finite());
        let rms = (finite.clone().map(|v| v * v).sum::<f32>() / finite.count().max(1) as f32).sqrt();
        for (i, (&a, &b)) in a.iter().zip(b).enumerate() {
            assert!(
                (a.is_nan() && b.is_nan()) || (a - b).abs() <= tolerance * (1.0 + b.abs() + rms),
                "{what}, element {i}: {a} against {b} (rms {rms})"
            );
        }
    }

    /// Checks the gradient autodiff gives each of `inputs` (flat) for the scalar `loss(inputs)`
    /// against central differences, at up to eight elements of each input.
    pub(crate) fn finite_difference_check(inputs: &[Tensor<1>], loss: impl Fn(&[Tensor<1>]) -> Tensor<1>) {
        const H: f32 = 1e-2;
        let tracked: Vec<Tensor<1>> = inputs.iter().map(|t| t.clone().require_grad()).collect();
        let grads = loss(&tracked).backward();
        for (i, input) in inputs.iter().enumerate() {
            let analytic = tracked[i]
                .grad(&grads)
                .expect("every input gets a gradient")
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let values = input.to_data().try_to_vec::<f32>().unwrap();
            for j in (0..values.len()).step_by(values.len().div_ceil(8)) {
                let at = |delta: f32| {
                    let mut moved = values.clone();
                    moved[j] += delta;
                    let mut args = inputs.to_vec();
                    args[i] = Tensor::from_data(TensorData::new(moved, [values.len()]), &input.device());
                    loss(&args).into_scalar::<f32>() as f64
                };
                let numeric = (at(H) - at(-H)) / (2.0 * H as f64);
                let autodiff = analytic[j] as f64;
                assert!(
                    (numeric - autodiff).abs() <= 2e-2 * (1.0 + numeric.abs()),
                    "input {i}, element {j}: autodiff {autodiff}, finite difference {numeric}"
                );
            }
        }
    }
}
