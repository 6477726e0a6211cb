//! Training-step timing of the default network, to compare backends on one machine.

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::*;

use crate::loss::{Negatives, triplet_center_loss};
use crate::model::{ExpressionNet, NetworkConfig};
use crate::training::Backend;

/// Mean milliseconds of one CE + TCL training step on random data (after 2 warm-up steps).
pub fn train_step_ms(backend: Backend, batch_size: usize, steps: usize) -> f64 {
    let device = backend.device().autodiff();
    device.seed(0);
    let mut model = ExpressionNet::new(&NetworkConfig::default(), &device);
    let mut optimizer = AdamWConfig::new().init();
    let ce = CrossEntropyLossConfig::new().init(&device);
    let inputs = Tensor::<4>::random(
        [batch_size, 1, 48, 48],
        burn::tensor::Distribution::Normal(0.0, 1.0),
        &device,
    );
    let labels = Tensor::<1, Int>::from_data(
        TensorData::new((0..batch_size as i64).map(|i| i % 7).collect::<Vec<_>>(), [batch_size]),
        &device,
    );
    let mut started = Instant::now();
    for step in 0..steps + 2 {
        if step == 2 {
            started = Instant::now();
        }
        let out = model.forward(inputs.clone());
        let tcl = triplet_center_loss(
            out.embedding,
            labels.clone(),
            model.centers.val(),
            out.logits.clone(),
            Negatives::SemiSynthesized { alpha: 0.5 },
            1.0,
        );
        let loss = ce.forward(out.logits, labels.clone()) + tcl.loss * 0.01;
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = optimizer.step(1e-3, model, grads);
    }
    let _ = device.sync();
    started.elapsed().as_secs_f64() * 1000.0 / steps as f64
}
