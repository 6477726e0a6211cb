//! The v2 network trains alike on wgpu and on flex: from the same weights and batch, the losses
//! and every parameter's gradient agree, and so do the losses of the next few optimisation steps.
//! Without a GPU, Mesa's lavapipe (Debian's `mesa-vulkan-drivers`) is wgpu's Vulkan device.
#![cfg(feature = "wgpu")]

use std::collections::HashMap;

use burn::module::{Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;
use fer_protocol::{Expression, INPUT};
use fer_train::batch::HostBatch;
use fer_train::config::{Backend, TclConfig};
use fer_train::model::{ExpressionNet, NetworkConfig};
use fer_train::training::batch_loss;

/// Largest difference between the backends, relative to the largest value of the flex tensor:
/// both sum thousands of products in different orders, whose rounding is about 1e-6 of a
/// value; 1e-4 leaves room for that and for the backward pass's longer chains, while a wrong
/// gradient is off by the size of the values.
const TOLERANCE: f32 = 1e-4;
/// Losses after a few AdamW steps: Adam divides by the root of tiny second moments, so rounding in
/// a gradient near zero moves a weight by up to the learning rate; the losses stay close.
const STEP_TOLERANCE: f64 = 1e-3;

/// The wgpu device, or `None` (a skip, a failure under `CI=true`) where there is none.
fn wgpu() -> Option<Device> {
    match Backend::Wgpu.device() {
        Ok(device) => Some(device),
        Err(error) => {
            fer_train::skip_test_unless_ci(&format!("{error:#}"));
            None
        }
    }
}

/// A fixed batch of 16 noise images, every class present. Noise, not a pattern: equal values in
/// a max-pool window are ties that each backend may break its own way (both right), and a
/// periodic image makes them.
fn batch() -> HostBatch {
    let n = 16;
    let labels: Vec<i64> = (0..n as i64).map(|i| i % Expression::COUNT as i64).collect();
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut noise = move || {
        // xorshift64*: plenty for test inputs, and the same on every machine.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        (state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 23) as f32 * 2.0 - 1.0
    };
    HostBatch {
        inputs: (0..n * INPUT.len()).map(|_| noise()).collect(),
        targets: labels
            .iter()
            .flat_map(|&l| (0..Expression::COUNT as i64).map(move |k| if k == l { 1.0 } else { 0.0 }))
            .collect(),
        labels,
    }
}

/// Every parameter's gradient by id, as host floats.
struct Grads<'a>(&'a GradientsParams, HashMap<ParamId, Vec<f32>>);

impl ModuleVisitor for Grads<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(grad) = self.0.get::<D>(param.id) {
            let values = grad
                .into_data()
                .convert::<f32>()
                .try_to_vec::<f32>()
                .expect("f32 gradient");
            self.1.insert(param.id, values);
        }
    }
}

/// The loss of `batch` on `model` (CE + TCL) and its gradients.
fn backward(model: &ExpressionNet, batch: &HostBatch, device: &Device) -> (f64, GradientsParams) {
    let adjustment = Tensor::<2>::zeros([1, Expression::COUNT], device);
    let loss = batch_loss(model, batch, Some(&TclConfig::default()), &adjustment, device).total;
    let total = f64::from(loss.clone().into_scalar::<f32>());
    (total, GradientsParams::from_grads(loss.backward(), model))
}

/// Every parameter's gradient by id, as host floats.
fn on_host(model: &ExpressionNet, grads: &GradientsParams) -> HashMap<ParamId, Vec<f32>> {
    let mut collect = Grads(grads, HashMap::new());
    model.visit(&mut collect);
    collect.1
}

/// `max |a − b| / max |b|`.
fn relative_difference(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs())) / scale
}

#[test]
fn the_v2_network_gives_the_same_losses_and_gradients_on_wgpu_as_on_flex() {
    let Some(gpu) = wgpu() else { return };
    let (flex, gpu) = (Device::flex().autodiff(), gpu.autodiff());
    flex.seed(42);
    // Dropout draws from each backend's own generator: off, so both compute the same function.
    let network = NetworkConfig {
        dropout: 0.0,
        ..NetworkConfig::default()
    };
    let on_flex = ExpressionNet::new(&network, &flex);
    let on_gpu = on_flex.clone().fork(&gpu);
    let batch = batch();

    let (loss_flex, grads_flex) = backward(&on_flex, &batch, &flex);
    let (loss_gpu, grads_gpu) = backward(&on_gpu, &batch, &gpu);
    let (grads_flex, grads_gpu) = (on_host(&on_flex, &grads_flex), on_host(&on_gpu, &grads_gpu));
    assert!(
        (loss_flex - loss_gpu).abs() <= f64::from(TOLERANCE) * loss_flex.abs(),
        "loss {loss_flex} on flex, {loss_gpu} on wgpu"
    );
    assert_eq!(grads_flex.len(), grads_gpu.len(), "the same parameters get gradients");
    let worst = grads_flex
        .iter()
        .map(|(id, flex)| relative_difference(&grads_gpu[id], flex))
        .fold(0f32, f32::max);
    assert!(worst <= TOLERANCE, "a gradient differs by {worst} of its largest value");

    // A few optimisation steps on each: the losses follow each other.
    let step = |mut model: ExpressionNet, device: &Device| {
        let mut optimizer = AdamWConfig::new().init();
        (0..3)
            .map(|_| {
                let (loss, grads) = backward(&model, &batch, device);
                model = optimizer.step(1e-3, model.clone(), grads);
                loss
            })
            .collect::<Vec<_>>()
    };
    let (steps_flex, steps_gpu) = (step(on_flex, &flex), step(on_gpu, &gpu));
    for (a, b) in steps_flex.iter().zip(&steps_gpu) {
        assert!(
            (a - b).abs() <= STEP_TOLERANCE * a.abs(),
            "losses over three steps: {steps_flex:?} on flex, {steps_gpu:?} on wgpu"
        );
    }
}
