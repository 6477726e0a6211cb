//! Per-face inference in tract, batch 1, f32 vs int8: what the device pays per face.
//!
//! Uses `models/fer.{f32,int8}.onnx` (or the prefix in `FER_BENCH_MODEL`); without
//! them it exports a freshly initialised default network, whose speed is the same.

use std::path::PathBuf;

use burn::prelude::*;
use criterion::{Criterion, criterion_group, criterion_main};
use fer_export::quantize::WeightScales;
use fer_export::{calibrate, float, graph, pipeline, quantize};
use fer_protocol::INPUT;
use fer_protocol::contract::Precision;
use fer_train::model::{ExpressionNet, NetworkConfig};
use tract_onnx::pb::ModelProto;

fn models() -> (ModelProto, ModelProto) {
    let prefix = std::env::var_os("FER_BENCH_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/fer"));
    let load = |suffix| {
        std::fs::read(pipeline::output_path(&prefix, suffix))
            .ok()
            .map(|b| graph::decode(&b).expect("valid ONNX"))
    };
    if let (Some(f32_model), Some(int8_model)) =
        (load(Precision::F32.file_suffix()), load(Precision::Int8.file_suffix()))
    {
        eprintln!("benchmarking {}", prefix.display());
        return (f32_model, int8_model);
    }
    eprintln!(
        "{} not found: benchmarking a freshly initialised default network",
        prefix.display()
    );
    let device = Device::flex();
    device.seed(7);
    let net = ExpressionNet::new(&NetworkConfig::default(), &device);
    let f32_model = float::export(&net, &device).expect("export");
    let inputs: Vec<Vec<f32>> = (0..16)
        .map(|i| {
            (0..INPUT.len())
                .map(|j| INPUT.normalise(((i * 31 + j * 7) % 255) as f32))
                .collect()
        })
        .collect();
    let tensors = calibrate::tensors_to_observe(&f32_model).expect("tensors");
    let ranges = calibrate::observe(&f32_model, &tensors, &inputs).expect("calibration");
    let (int8_model, _) = quantize::quantize(&f32_model, &ranges, WeightScales::PerTensor, &[]).expect("quantize");
    (f32_model, int8_model)
}

fn per_face(c: &mut Criterion) {
    let (f32_model, int8_model) = models();
    let input: Vec<f32> = (0..INPUT.len()).map(|i| (i % 97) as f32 / 48.5 - 1.0).collect();
    let mut group = c.benchmark_group("tract per face (batch 1)");
    // int8 takes ~0.1 s per face on x86 (docs/export.md): 30 samples keep the run under a minute.
    group.sample_size(30);
    for (precision, model) in [(Precision::F32, &f32_model), (Precision::Int8, &int8_model)] {
        let mut runner = graph::plan(model).expect("runnable model");
        group.bench_function(precision.name(), |b| {
            b.iter(|| runner.outputs(std::hint::black_box(&input)).expect("run"));
        });
    }
    group.finish();
}

criterion_group!(benches, per_face);
criterion_main!(benches);
