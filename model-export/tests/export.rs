//! End-to-end checks of fer-export on a tiny trained run: files, contract, parity, golden vectors,
//! and clear errors (with nothing written) on bad input.

use std::path::{Path, PathBuf};

use fer_export::ExportOptions;
use fer_export::calibrate::RangeMethod;
use fer_export::graph;
use fer_export::pipeline::{load_checked, output_path};
use fer_export::quantize::WeightScales;
use fer_protocol::contract::Precision;
use fer_protocol::golden::GoldenSet;
use fer_train::config::{Backend, TrainConfig};
use fer_train::dataset::{DatasetSpec, write_synthetic};
use fer_train::model::NetworkConfig;
use fer_train::run::{Run, files};
use fer_train::training;

/// Burn's random generator is global to the process and every test here draws from it
/// (initialisation, random inputs): they take turns, or one test's draws land in another's run.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A synthetic data set and a small run trained on it for one epoch (about a second).
fn trained_run(root: &Path, tcl: bool) -> (DatasetSpec, PathBuf) {
    trained_run_on(root, tcl, Backend::Flex)
}

/// [`trained_run`] on `backend`.
fn trained_run_on(root: &Path, tcl: bool, backend: Backend) -> (DatasetSpec, PathBuf) {
    let data_dir = root.join("data");
    write_synthetic(&data_dir, 16).unwrap();
    let data: DatasetSpec = format!("folders:{}", data_dir.display()).parse().unwrap();
    let smoke = TrainConfig::smoke(data.clone());
    let mut config = TrainConfig {
        epochs: 1,
        limit: None,
        // The v2 (depthwise-separable) blocks, wide enough that the weights outweigh the int8
        // graph's per-tensor scales and names.
        network: NetworkConfig {
            widths: [8, 16, 32, 64],
            ..smoke.network.clone()
        },
        backend,
        ..smoke
    };
    if !tcl {
        config.tcl = None;
    }
    let run = root.join("run");
    training::train(&config, &Run::at(&run), false).unwrap();
    (data, run)
}

fn options(data: &DatasetSpec, run: &Path, out: &Path) -> ExportOptions {
    ExportOptions {
        run: run.to_path_buf(),
        calibration: data.clone(),
        calibration_images: 64,
        min_calibration_images: 32,
        evaluation: None,
        parity_images: 100,
        max_parity_error: 1e-4,
        // A one-epoch tiny model has near-tied logits, so int8 flips some of them: the real
        // thresholds are for real models (see docs/export.md).
        min_agreement: 0.0,
        max_accuracy_drop: 1.0,
        weight_scales: WeightScales::PerTensor,
        equalize: true,
        f32_convs: Vec::new(),
        activation_ranges: RangeMethod::MinMax,
        out: out.to_path_buf(),
    }
}

fn written(out: &Path) -> Vec<PathBuf> {
    let dir = out.parent().unwrap();
    if !dir.exists() {
        return Vec::new();
    }
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect()
}

/// A checkpoint written on wgpu (Mesa's lavapipe where there is no GPU) exports on the host, and
/// the f32 model matches the checkpoint as closely as a flex-trained one does.
#[cfg(feature = "wgpu")]
#[test]
fn a_run_trained_on_wgpu_exports_and_passes_the_gates() {
    let _turn = one_at_a_time();
    if let Err(error) = Backend::Wgpu.device() {
        fer_train::skip_test_unless_ci(&format!("{error:#}"));
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let (data, run) = trained_run_on(root.path(), true, Backend::Wgpu);
    assert_eq!(Run::at(&run).config().unwrap().backend, Backend::Wgpu);
    let out = root.path().join("models/tiny");
    let report = fer_export::export(&options(&data, &run, &out)).unwrap();
    assert!(
        report.parity_images >= 100 && report.parity_max_logit_error <= 1e-4,
        "{report:?}"
    );
    assert!(load_checked(&output_path(&out, Precision::Int8.file_suffix())).is_ok());
}

#[test]
fn exports_checked_models_and_golden_vectors() {
    let _turn = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let (data, run) = trained_run(root.path(), true);
    let out = root.path().join("models/tiny");
    let report = fer_export::export(&options(&data, &run, &out)).unwrap();

    assert!(report.parity_images >= 100, "parity on {} images", report.parity_images);
    assert!(
        report.parity_max_logit_error <= 1e-4,
        "{}",
        report.parity_max_logit_error
    );
    assert!(!report.centers_from_class_means);
    assert!(report.int8_bytes < report.f32_bytes);
    // tract plans float convs through LazyIm2col and integer convs through Im2col.
    let count = |ops: &[(String, usize)], name: &str| ops.iter().find(|(op, _)| op == name).map_or(0, |(_, n)| *n);
    assert_eq!(
        count(&report.int8_plan_ops, "LazyIm2col"),
        0,
        "a float conv in {:?}",
        report.int8_plan_ops
    );
    assert!(
        count(&report.int8_plan_ops, "Im2col") >= 8,
        "{:?}",
        report.int8_plan_ops
    );
    assert_eq!(count(&report.f32_plan_ops, "Im2col"), 0, "{:?}", report.f32_plan_ops);

    let (f32_model, f32_info) = load_checked(&output_path(&out, Precision::F32.file_suffix())).unwrap();
    let (int8_model, int8_info) = load_checked(&output_path(&out, Precision::Int8.file_suffix())).unwrap();
    assert_eq!(
        (f32_info.precision, int8_info.precision),
        (Precision::F32, Precision::Int8)
    );
    assert_eq!(f32_info.weights_sha256, int8_info.weights_sha256);
    assert_eq!(f32_info.version, "run epoch 1");
    assert!(f32_info.training.contains("ce+tcl"), "{}", f32_info.training);

    // The golden vectors are what tract computes for their inputs, which are the crops preprocessed.
    let golden_path = output_path(&out, fer_protocol::golden::FILE_SUFFIX);
    let golden: GoldenSet = serde_json::from_slice(&std::fs::read(&golden_path).unwrap()).unwrap();
    assert!(std::fs::metadata(&golden_path).unwrap().len() < 1_000_000);
    assert_eq!(golden.cases.len(), 8, "one per expression plus a resized crop");
    assert!(golden.cases.iter().any(|c| (c.width, c.height) != (48, 48)));
    let (mut f32_runner, mut int8_runner) = (graph::plan(&f32_model).unwrap(), graph::plan(&int8_model).unwrap());
    for case in &golden.cases {
        let mut input = vec![0.0; fer_protocol::INPUT.len()];
        fer_protocol::preprocess(&fer_protocol::INPUT, &case.crop, case.width, case.height, &mut input).unwrap();
        assert_eq!(input, case.input, "{}", case.name);
        assert_eq!(
            f32_runner.outputs(&case.input).unwrap().logits,
            case.f32.logits,
            "{}",
            case.name
        );
        assert_eq!(
            int8_runner.outputs(&case.input).unwrap().logits,
            case.int8.logits,
            "{}",
            case.name
        );
    }
    // Equalizing the depthwise → pointwise pairs (every separable block) leaves the f32
    // function as it was.
    let inputs: Vec<Vec<f32>> = golden.cases.iter().map(|c| c.input.clone()).collect();
    let (equalized, pairs) = fer_export::equalize::equalize(&f32_model, &inputs).unwrap();
    assert_eq!(pairs, report.equalized_pairs);
    assert!(pairs >= 3, "{pairs} pairs");
    let mut equalized_runner = graph::plan(&equalized).unwrap();
    for input in &inputs {
        let (before, after) = (
            f32_runner.outputs(input).unwrap(),
            equalized_runner.outputs(input).unwrap(),
        );
        for (a, b) in before.logits.iter().zip(&after.logits) {
            assert!((a - b).abs() <= 1e-4, "{:?} vs {:?}", before.logits, after.logits);
        }
    }
    for suffix in ["report.json", "report.md"] {
        assert!(output_path(&out, suffix).is_file());
    }
    assert!(!written(&out).iter().any(|p| p.extension().is_some_and(|e| e == "tmp")));
}

#[test]
fn cross_entropy_runs_get_class_mean_centers() {
    let _turn = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let (data, run) = trained_run(root.path(), false);
    let out = root.path().join("models/ce");
    // Also: the first conv left in f32 stays a plain Conv in the int8 graph, and MSE clipping runs.
    let report = fer_export::export(&ExportOptions {
        f32_convs: vec![0],
        activation_ranges: RangeMethod::Mse,
        ..options(&data, &run, &out)
    })
    .unwrap();
    assert!(report.centers_from_class_means);
    let (_, info) = load_checked(&output_path(&out, Precision::F32.file_suffix())).unwrap();
    assert!(info.training.contains("class means"), "{}", info.training);
    let (int8, _) = load_checked(&output_path(&out, Precision::Int8.file_suffix())).unwrap();
    let ops = |op: &str| {
        int8.graph
            .as_ref()
            .unwrap()
            .node
            .iter()
            .filter(|n| n.op_type == op)
            .count()
    };
    let (f32_model, _) = load_checked(&output_path(&out, Precision::F32.file_suffix())).unwrap();
    let convs = f32_model
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .filter(|n| n.op_type == "Conv")
        .count();
    assert_eq!((ops("Conv"), ops("QLinearConv")), (1, convs - 1));
    assert_eq!(report.layers.len(), convs - 1);
}

#[test]
fn bad_input_is_a_clear_error_and_writes_nothing() {
    let _turn = one_at_a_time();
    let root = tempfile::tempdir().unwrap();
    let (data, run) = trained_run(root.path(), true);
    let out = root.path().join("models/bad");
    let fails_with = |options: ExportOptions, expected: &str| {
        let error = format!("{:#}", fer_export::export(&options).unwrap_err());
        assert!(error.contains(expected), "expected `{expected}` in: {error}");
        assert!(written(&out).is_empty(), "files written on error: {:?}", written(&out));
    };

    fails_with(options(&data, &root.path().join("nowhere"), &out), "not a run folder");

    let too_few = ExportOptions {
        calibration_images: 1000,
        min_calibration_images: 1000,
        ..options(&data, &run, &out)
    };
    fails_with(too_few, "calibration needs at least 1000");
    let fewer_than_the_minimum = ExportOptions {
        calibration_images: 0,
        ..options(&data, &run, &out)
    };
    fails_with(
        fewer_than_the_minimum,
        "--calibration-images 0 is under --min-calibration-images 32",
    );
    let not_a_fraction = ExportOptions {
        min_agreement: f64::NAN,
        ..options(&data, &run, &out)
    };
    fails_with(not_a_fraction, "--min-agreement NaN is a fraction");
    let no_such_conv = ExportOptions {
        f32_convs: vec![999],
        ..options(&data, &run, &out)
    };
    fails_with(no_such_conv, "--f32-convs 999: the model has");
    let folder = ExportOptions {
        out: PathBuf::from(format!("{}/", out.display())),
        ..options(&data, &run, &out)
    };
    fails_with(folder, "not a folder");

    let missing: DatasetSpec = format!("folders:{}", root.path().join("no-data").display())
        .parse()
        .unwrap();
    fails_with(
        ExportOptions {
            calibration: missing,
            ..options(&data, &run, &out)
        },
        "calibration images",
    );

    // A config that no longer matches the weights.
    let config_path = run.join(files::CONFIG);
    let original = std::fs::read_to_string(&config_path).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&original).unwrap();
    config["network"]["embedding_dim"] = serde_json::json!(12);
    std::fs::write(&config_path, config.to_string()).unwrap();
    fails_with(options(&data, &run, &out), "does config.json match the weights");
    std::fs::write(&config_path, original).unwrap();

    // The int8 gate is live: a model that misses it (here: int8 would have to beat f32 by 100
    // points) is refused and nothing is written.
    fails_with(
        ExportOptions {
            max_accuracy_drop: -1.0,
            ..options(&data, &run, &out)
        },
        "quantization check failed",
    );

    // Weights whose epoch is unknown are not exported as "epoch 0".
    let state = std::fs::read_to_string(run.join(files::STATE)).unwrap();
    std::fs::write(run.join(files::STATE), b"{ truncated").unwrap();
    fails_with(options(&data, &run, &out), "which epoch the weights hold");
    std::fs::write(run.join(files::STATE), state).unwrap();

    std::fs::write(run.join(files::MODEL), b"not a burnpack").unwrap();
    fails_with(options(&data, &run, &out), "model.burnpack");
}
