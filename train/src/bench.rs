//! Training-step timing of the default network, to compare backends on one machine.

use std::time::Instant;

use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::AdamWConfig;
use fer_protocol::{Expression, INPUT};

use crate::batch::HostBatch;
use crate::model::{ExpressionNet, NetworkConfig};
use crate::training::{Backend, TclConfig, train_step};

/// Mean milliseconds of one default training step (CE + TCL) on random inputs, after 2 warm-up
/// steps.
pub fn train_step_ms(backend: Backend, batch_size: usize, steps: usize) -> f64 {
    let device = backend.device().autodiff();
    device.seed(0);
    let mut model = ExpressionNet::new(&NetworkConfig::default(), &device);
    let mut optimizer = AdamWConfig::new().init();
    let cross_entropy = CrossEntropyLossConfig::new().init(&device);
    let batch = HostBatch {
        inputs: (0..batch_size * INPUT.len())
            .map(|i| ((i * 7919) % 255) as f32 / 127.5 - 1.0)
            .collect(),
        labels: (0..batch_size as i64).map(|i| i % Expression::COUNT as i64).collect(),
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
            &cross_entropy,
            1e-3,
            &device,
        );
    }
    let _ = device.sync();
    started.elapsed().as_secs_f64() * 1000.0 / steps as f64
}
