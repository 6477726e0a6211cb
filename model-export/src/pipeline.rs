//! The whole export: checkpoint → f32 ONNX → calibrated int8 ONNX, checked, with golden vectors.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::prelude::*;
use fer_protocol::contract::{self, Precision, keys};
use fer_protocol::golden::{GoldenCase, GoldenSet};
use fer_protocol::{Expression, INPUT};
use fer_train::batch::eval_batch;
use fer_train::config::TrainConfig;
use fer_train::dataset::{LoadOptions, Sample, Split};
use fer_train::metrics::Metrics;
use fer_train::run::{self, Run};
use indicatif::{ProgressBar, ProgressStyle};
use tract_onnx::pb::ModelProto;

use crate::options::ExportOptions;
use crate::report::ExportReport;
use crate::{calibrate, float, graph, quantize};
use fer_protocol::scores::argmax;
use fer_runtime::Plan;

/// Runs the export and writes its files; nothing is written unless every check passes.
pub fn export(options: &ExportOptions) -> Result<ExportReport> {
    let device = Device::flex();
    let run = Run::at(&options.run);
    let (model, config) = run.load_model(&device)?;
    options.validate()?;
    writable(&options.out)?;
    let state = run
        .state()
        .and_then(|state| state.context("no epoch finished"))
        .context("the run's state says which epoch the weights hold, for the model card")?;
    let evaluation_spec = options
        .evaluation
        .clone()
        .or(config.valid.clone())
        .unwrap_or(config.data.clone());

    let calibration = load_calibration(options)?;
    let centers_from_class_means = config.tcl.is_none();
    let model = if centers_from_class_means {
        tracing::info!("cross-entropy run: centers set to the class means of the calibration embeddings");
        fer_train::embedding::with_class_mean_centers(model, &calibration, &device)?
    } else {
        model
    };

    let mut f32_model = float::export(&model, &device)?;
    let weights_sha256 = graph::weights_sha256(graph::graph(&f32_model)?)?;
    let model_version = format!(
        "{} epoch {}",
        options.run.file_name().map_or("run".into(), |n| n.to_string_lossy()),
        state.epochs_done
    );
    let mut props: Vec<(&str, String)> = contract::required_props();
    props.extend([
        (keys::MODEL_VERSION, model_version.clone()),
        (keys::WEIGHTS_SHA256, weights_sha256.clone()),
        (keys::TRAINING, training_summary(&config)),
        (keys::EVALUATION, evaluation_summary(&options.run)),
        (keys::PRECISION, Precision::F32.to_string()),
    ]);
    graph::set_metadata(&mut f32_model, props);

    let evaluation = evaluation_spec
        .load_verbose(Split::Valid, LoadOptions::default())
        .with_context(|| format!("loading the evaluation images ({evaluation_spec})"))?
        .samples;
    ensure!(!evaluation.is_empty(), "{evaluation_spec} has no validation images");
    let mut f32_runner = graph::plan(&f32_model).context("the f32 model does not run in tract")?;
    let parity = parity(
        &model,
        &mut f32_runner,
        &evaluation[..options.parity_images.min(evaluation.len())],
        &device,
    )?;
    ensure!(
        parity.logits <= options.max_parity_error,
        "parity check failed: Burn and tract f32 logits differ by {:.3e} (limit {:.0e})",
        parity.logits,
        options.max_parity_error
    );

    let inputs: Vec<Vec<f32>> = calibration.iter().map(preprocessed).collect();
    let (to_quantize, equalized_pairs) = if options.equalize {
        crate::equalize::equalize(&f32_model, &inputs)?
    } else {
        (f32_model.clone(), 0)
    };
    let observed = calibrate::tensors_to_observe(&to_quantize)?;
    let ranges = calibrate::ranges(&to_quantize, &observed, &inputs, options.activation_ranges)?;
    let (mut int8_model, layers) =
        quantize::quantize(&to_quantize, &ranges, options.weight_scales, &options.f32_convs)?;
    graph::set_metadata(&mut int8_model, [(keys::PRECISION, Precision::Int8.to_string())]);
    let mut int8_runner = graph::plan(&int8_model).context("the int8 model does not run in tract")?;

    let quality = compare(&mut f32_runner, &mut int8_runner, &evaluation)?;
    let f32_accuracy = quality.f32_metrics.accuracy;
    let int8_accuracy = quality.int8_metrics.accuracy;
    ensure!(
        quality.agreement >= options.min_agreement && f32_accuracy - int8_accuracy <= options.max_accuracy_drop,
        "quantization check failed: int8 agrees with f32 on {:.2} % of images (need {:.2} %), accuracy {:.2} % vs \
         {:.2} % (allowed drop {:.2} points); per-channel weights with MSE-clipped activation ranges (the \
         defaults) are the most precise this export offers; --f32-convs keeps chosen convs in f32",
        quality.agreement * 100.0,
        options.min_agreement * 100.0,
        int8_accuracy * 100.0,
        f32_accuracy * 100.0,
        options.max_accuracy_drop * 100.0
    );

    let golden = golden_set(
        &mut f32_runner,
        &mut int8_runner,
        &evaluation,
        &model_version,
        &weights_sha256,
    )?;
    let f32_bytes = graph::encode(&f32_model);
    let int8_bytes = graph::encode(&int8_model);
    let mut report = ExportReport {
        model_version,
        weights_sha256,
        centers_from_class_means,
        calibration_images: calibration.len(),
        equalized_pairs,
        parity_images: parity.images,
        parity_max_logit_error: parity.logits,
        parity_max_embedding_error: parity.embedding,
        parity_max_distance_rel_error: parity.distances,
        evaluation_images: evaluation.len(),
        f32_metrics: quality.f32_metrics,
        int8_metrics: quality.int8_metrics,
        f32_flip_metrics: quality.f32_flip_metrics,
        int8_flip_metrics: quality.int8_flip_metrics,
        agreement: quality.agreement,
        int8_max_logit_error: quality.max_logit_error,
        f32_bytes: f32_bytes.len(),
        int8_bytes: int8_bytes.len(),
        f32_ms_per_face: quality.f32_ms,
        int8_ms_per_face: quality.int8_ms,
        f32_plan_ops: f32_runner.op_census(),
        int8_plan_ops: int8_runner.op_census(),
        layers,
        files: Vec::new(),
    };
    write_outputs(options, &f32_bytes, &int8_bytes, &golden, &mut report)?;
    Ok(report)
}

/// Fails now, not after minutes of calibration, if the files cannot be written next to `prefix`.
fn writable(prefix: &Path) -> Result<()> {
    let dir = prefix
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("--out: creating {}", dir.display()))?;
    let probe = dir.join(format!(".fer-export-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").with_context(|| format!("--out: {} is not writable", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Output path `PREFIX.suffix`.
pub fn output_path(prefix: &Path, suffix: &str) -> PathBuf {
    let mut name = prefix.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    prefix.with_file_name(name)
}

fn write_outputs(
    options: &ExportOptions,
    f32_bytes: &[u8],
    int8_bytes: &[u8],
    golden: &GoldenSet,
    report: &mut ExportReport,
) -> Result<()> {
    if let Some(dir) = options.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let files = [
        Precision::F32.file_suffix(),
        Precision::Int8.file_suffix(),
        fer_protocol::golden::FILE_SUFFIX,
        "report.json",
        "report.md",
    ]
    .map(|suffix| output_path(&options.out, suffix));
    report.files = files.to_vec();
    let contents: [Vec<u8>; 5] = [
        f32_bytes.to_vec(),
        int8_bytes.to_vec(),
        serde_json::to_vec(golden)?,
        serde_json::to_vec_pretty(report)?,
        crate::report::markdown(report, options).into_bytes(),
    ];
    for (path, bytes) in files.iter().zip(contents) {
        run::write_atomically(path, |tmp| {
            std::fs::write(tmp, bytes).with_context(|| format!("writing {}", tmp.display()))
        })?;
    }
    Ok(())
}

/// The calibration images: up to `calibration_images`, spread evenly over the training split.
fn load_calibration(options: &ExportOptions) -> Result<Vec<Sample>> {
    let spec = &options.calibration;
    let all = spec
        .load_verbose(Split::Train, LoadOptions { skip_bad: true })
        .with_context(|| format!("loading the calibration images ({spec})"))?
        .samples;
    if all.len() < options.min_calibration_images {
        bail!(
            "{spec} has {} usable training images; calibration needs at least {}",
            all.len(),
            options.min_calibration_images
        );
    }
    let wanted = options.calibration_images.max(1).min(all.len());
    let stride = all.len() as f64 / wanted as f64;
    Ok((0..wanted).map(|i| all[(i as f64 * stride) as usize].clone()).collect())
}

fn preprocessed(sample: &Sample) -> Vec<f32> {
    eval_batch(std::slice::from_ref(sample)).inputs
}

fn training_summary(config: &TrainConfig) -> String {
    let loss = match &config.tcl {
        Some(tcl) => format!(
            "ce+tcl(negatives {:?}, lambda {}, margin {})",
            tcl.negatives, tcl.lambda, tcl.margin
        ),
        None => "ce (centers = calibration class means)".to_string(),
    };
    format!(
        "data {}; loss {loss}; epochs {}; batch {}; lr {}; seed {}; attention {}",
        config.data, config.epochs, config.batch_size, config.lr, config.seed, config.network.attention
    )
}

fn evaluation_summary(run: &Path) -> String {
    match Run::at(run).report().ok() {
        Some(m) => format!(
            "checkpoint valid: {} images, accuracy {:.2} %, mean class accuracy {:.2} %, macro-F1 {:.2} %",
            m.count,
            m.accuracy * 100.0,
            m.mean_class_accuracy * 100.0,
            m.macro_f1 * 100.0
        ),
        None => "not evaluated (the run folder has no report.json)".to_string(),
    }
}

struct Parity {
    images: usize,
    logits: f32,
    embedding: f32,
    distances: f32,
}

/// Largest differences between Burn's forward pass and the f32 ONNX model in tract.
fn parity(
    model: &fer_train::model::ExpressionNet,
    runner: &mut Plan,
    samples: &[Sample],
    device: &Device,
) -> Result<Parity> {
    let mut result = Parity {
        images: samples.len(),
        logits: 0.0,
        embedding: 0.0,
        distances: 0.0,
    };
    for chunk in samples.chunks(64) {
        let batch = eval_batch(chunk);
        let [logits, embedding, distances] = float::burn_outputs(model, &batch.inputs, device);
        let (k, d) = (logits.len() / chunk.len(), embedding.len() / chunk.len());
        for (i, input) in batch.inputs.chunks_exact(INPUT.len()).enumerate() {
            let out = runner.outputs(input)?;
            result.logits = result
                .logits
                .max(max_abs_diff(&out.logits, &logits[i * k..(i + 1) * k]));
            result.embedding = result
                .embedding
                .max(max_abs_diff(&out.embedding, &embedding[i * d..(i + 1) * d]));
            for (a, b) in out.center_distances.iter().zip(&distances[i * k..(i + 1) * k]) {
                result.distances = result.distances.max((a - b).abs() / b.abs().max(1.0));
            }
        }
    }
    Ok(result)
}

/// Largest |a − b| over two equally long slices.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

struct Quality {
    f32_metrics: Metrics,
    int8_metrics: Metrics,
    f32_flip_metrics: Metrics,
    int8_flip_metrics: Metrics,
    agreement: f64,
    max_logit_error: f32,
    f32_ms: f64,
    int8_ms: f64,
}

/// Runs both models on every sample and compares them with the labels and with each other.
fn compare(f32_runner: &mut Plan, int8_runner: &mut Plan, samples: &[Sample]) -> Result<Quality> {
    let bar = ProgressBar::new(samples.len() as u64).with_style(
        ProgressStyle::with_template("comparing f32 and int8 {bar:30} {pos}/{len} faces ({eta} left)")
            .expect("valid template"),
    );
    let (mut f32_pairs, mut int8_pairs) = (Vec::new(), Vec::new());
    let (mut f32_flip_pairs, mut int8_flip_pairs) = (Vec::new(), Vec::new());
    let (mut agree, mut max_logit_error) = (0usize, 0.0f32);
    let (mut f32_time, mut int8_time) = (0.0, 0.0);
    for sample in bar.wrap_iter(samples.iter()) {
        let input = preprocessed(sample);
        let start = Instant::now();
        let a = f32_runner.outputs(&input)?;
        f32_time += start.elapsed().as_secs_f64();
        let start = Instant::now();
        let b = int8_runner.outputs(&input)?;
        int8_time += start.elapsed().as_secs_f64();
        let label = sample.label.index();
        let (a_top, b_top) = (argmax(&a.logits), argmax(&b.logits));
        f32_pairs.push((label, a_top));
        int8_pairs.push((label, b_top));
        agree += usize::from(a_top == b_top);
        max_logit_error = max_logit_error.max(max_abs_diff(&a.logits, &b.logits));
        // Test-time flip averaging, as the sensor does it with classify.flip (not timed).
        let mut mirrored = input;
        INPUT.mirror(&mut mirrored);
        let mut averaged = [0.0; Expression::COUNT];
        fer_protocol::scores::flip_averaged(&a.logits, &f32_runner.outputs(&mirrored)?.logits, &mut averaged);
        f32_flip_pairs.push((label, argmax(&averaged)));
        fer_protocol::scores::flip_averaged(&b.logits, &int8_runner.outputs(&mirrored)?.logits, &mut averaged);
        int8_flip_pairs.push((label, argmax(&averaged)));
    }
    bar.finish_and_clear();
    let n = samples.len() as f64;
    Ok(Quality {
        f32_metrics: Metrics::from_pairs(f32_pairs),
        int8_metrics: Metrics::from_pairs(int8_pairs),
        f32_flip_metrics: Metrics::from_pairs(f32_flip_pairs),
        int8_flip_metrics: Metrics::from_pairs(int8_flip_pairs),
        agreement: agree as f64 / n,
        max_logit_error,
        f32_ms: f32_time * 1000.0 / n,
        int8_ms: int8_time * 1000.0 / n,
    })
}

/// One face per expression (the first of each class), plus the first face cropped off-centre to
/// 40x44 so the resizing path of the preprocessing is covered too.
fn golden_set(
    f32_runner: &mut Plan,
    int8_runner: &mut Plan,
    samples: &[Sample],
    model_version: &str,
    weights_sha256: &str,
) -> Result<GoldenSet> {
    let mut crops: Vec<(String, Expression, usize, usize, Vec<u8>)> = Vec::new();
    for expression in Expression::ALL {
        if let Some((i, s)) = samples.iter().enumerate().find(|(_, s)| s.label == expression) {
            crops.push((
                format!("validation image {i}"),
                s.label,
                s.width,
                s.height,
                s.pixels.clone(),
            ));
        }
    }
    let first = &samples[0];
    if first.width >= 44 && first.height >= 48 {
        let (w, h, x0, y0) = (40, 44, 3, 2);
        let pixels = (y0..y0 + h)
            .flat_map(|y| (x0..x0 + w).map(move |x| (x, y)))
            .map(|(x, y)| first.pixels[y * first.width + x])
            .collect();
        crops.push((
            "validation image 0, cropped to 40x44 at (3, 2)".into(),
            first.label,
            w,
            h,
            pixels,
        ));
    }
    let mut cases = Vec::new();
    for (name, label, width, height, crop) in crops {
        let mut input = vec![0.0; INPUT.len()];
        fer_protocol::preprocess(&INPUT, &crop, width, height, &mut input)
            .map_err(|e| anyhow::anyhow!("golden crop {name}: {e:?}"))?;
        cases.push(GoldenCase {
            f32: f32_runner.outputs(&input)?,
            int8: int8_runner.outputs(&input)?,
            name,
            label: label.name().to_string(),
            width,
            height,
            crop,
            input,
        });
    }
    Ok(GoldenSet {
        contract: contract::CONTRACT_VERSION.to_string(),
        model_version: model_version.to_string(),
        weights_sha256: weights_sha256.to_string(),
        cases,
    })
}

/// Loads an exported model file and checks its contract, as the device does.
pub fn load_checked(path: &Path) -> Result<(ModelProto, contract::ModelInfo)> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let model = graph::decode(&bytes).with_context(|| path.display().to_string())?;
    let info = contract::check(&graph::metadata(&model)).with_context(|| path.display().to_string())?;
    Ok((model, info))
}
