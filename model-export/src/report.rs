//! The short human-readable export report (`NAME.report.md`).

use std::fmt::Write;

use std::path::PathBuf;

use fer_train::metrics::Metrics;

use crate::options::ExportOptions;
use crate::quantize::LayerReport;

/// The measured outcome of an export.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportReport {
    /// `fer.model_version` of both files.
    pub model_version: String,
    /// `fer.weights_sha256` of both files.
    pub weights_sha256: String,
    /// Whether the centers were replaced by calibration class means (cross-entropy runs).
    pub centers_from_class_means: bool,
    /// Calibration images used.
    pub calibration_images: usize,
    /// Depthwise → pointwise pairs equalized before quantization.
    pub equalized_pairs: usize,
    /// Images in the parity check.
    pub parity_images: usize,
    /// Largest |Δ| of a logit between Burn and tract f32.
    pub parity_max_logit_error: f32,
    /// Largest |Δ| of an embedding value between Burn and tract f32.
    pub parity_max_embedding_error: f32,
    /// Largest relative |Δ| of a center distance between Burn and tract f32.
    pub parity_max_distance_rel_error: f32,
    /// Images in the quality check.
    pub evaluation_images: usize,
    /// Metrics of the f32 ONNX model in tract.
    pub f32_metrics: Metrics,
    /// Metrics of the int8 ONNX model in tract.
    pub int8_metrics: Metrics,
    /// Metrics of the f32 model with test-time flip averaging (the sensor's `classify.flip`).
    pub f32_flip_metrics: Metrics,
    /// Metrics of the int8 model with test-time flip averaging.
    pub int8_flip_metrics: Metrics,
    /// Share of evaluation images where both models pick the same class.
    pub agreement: f64,
    /// Largest |Δlogit| between f32 and int8 over the evaluation images.
    pub int8_max_logit_error: f32,
    /// f32 file size in bytes.
    pub f32_bytes: usize,
    /// int8 file size in bytes.
    pub int8_bytes: usize,
    /// Mean tract latency per face over the evaluation pass, f32, in milliseconds.
    pub f32_ms_per_face: f64,
    /// Mean tract latency per face over the evaluation pass, int8, in milliseconds.
    pub int8_ms_per_face: f64,
    /// Operators of tract's optimized f32 plan, with counts.
    pub f32_plan_ops: Vec<(String, usize)>,
    /// Operators of tract's optimized int8 plan, with counts.
    pub int8_plan_ops: Vec<(String, usize)>,
    /// What quantization did to each conv.
    pub layers: Vec<LayerReport>,
    /// The files written.
    pub files: Vec<PathBuf>,
}

fn percent(x: f64) -> String {
    format!("{:.2} %", x * 100.0)
}

/// Renders the report as Markdown.
pub fn markdown(r: &ExportReport, options: &ExportOptions) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Export of `{}`\n", r.model_version);
    let _ = writeln!(s, "- run: `{}`", options.run.display());
    let _ = writeln!(s, "- weights SHA-256: `{}`", r.weights_sha256);
    let _ = writeln!(
        s,
        "- calibration: {} images of `{}`{}",
        r.calibration_images,
        options.calibration,
        if r.centers_from_class_means {
            " (also used for the class-mean centers)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "- weight scales: {:?}; activation ranges: {:?}; depthwise → pointwise pairs equalized: {}; convs left \
         in f32: {:?}\n",
        options.weight_scales, options.activation_ranges, r.equalized_pairs, options.f32_convs
    );
    let _ = writeln!(s, "## Checks\n");
    let _ = writeln!(
        s,
        "- parity, Burn vs tract f32 on {} images: max |Δlogit| {:.2e}, max |Δembedding| {:.2e}, max relative \
         |Δdistance| {:.2e}",
        r.parity_images, r.parity_max_logit_error, r.parity_max_embedding_error, r.parity_max_distance_rel_error
    );
    let _ = writeln!(
        s,
        "- {} evaluation images: f32 accuracy {} (mean class {}), int8 accuracy {} (mean class {}), top-1 \
         agreement {}, max |Δlogit| {:.3}",
        r.evaluation_images,
        percent(r.f32_metrics.accuracy),
        percent(r.f32_metrics.mean_class_accuracy),
        percent(r.int8_metrics.accuracy),
        percent(r.int8_metrics.mean_class_accuracy),
        percent(r.agreement),
        r.int8_max_logit_error
    );
    let _ = writeln!(
        s,
        "- with test-time flip averaging (`classify.flip`, twice the classifier's time): f32 accuracy {} (mean \
         class {}), int8 accuracy {} (mean class {})",
        percent(r.f32_flip_metrics.accuracy),
        percent(r.f32_flip_metrics.mean_class_accuracy),
        percent(r.int8_flip_metrics.accuracy),
        percent(r.int8_flip_metrics.mean_class_accuracy)
    );
    let _ = writeln!(
        s,
        "- size: f32 {} bytes, int8 {} bytes ({:.2}x smaller)",
        r.f32_bytes,
        r.int8_bytes,
        r.f32_bytes as f64 / r.int8_bytes as f64
    );
    let _ = writeln!(
        s,
        "- tract latency during the check (batch 1, this machine, not a benchmark): f32 {:.3} ms, int8 \
        {:.3} ms per face\n",
        r.f32_ms_per_face, r.int8_ms_per_face
    );
    let _ = writeln!(s, "## Convolutions\n");
    let _ = writeln!(
        s,
        "| conv | weight SQNR per-tensor (dB) | per-channel (dB) | scales | ReLU fused |"
    );
    let _ = writeln!(s, "| --- | ---: | ---: | --- | --- |");
    for l in &r.layers {
        let _ = writeln!(
            s,
            "| `{}` | {:.1} | {:.1} | {} | {} |",
            l.name,
            l.sqnr_per_tensor_db,
            l.sqnr_per_channel_db,
            if l.per_channel { "per-channel" } else { "per-tensor" },
            if l.fused_relu { "yes" } else { "no" }
        );
    }
    for (title, ops) in [("f32", &r.f32_plan_ops), ("int8", &r.int8_plan_ops)] {
        let _ = writeln!(s, "\n## tract's optimized {title} plan\n");
        let line: Vec<String> = ops.iter().map(|(op, n)| format!("{op} x{n}")).collect();
        let _ = writeln!(s, "{}", line.join(", "));
    }
    s
}
