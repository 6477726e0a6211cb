//! From a fer-train checkpoint to the files the sensor runs: an f32 ONNX model, its int8
//! quantization in the operator form tract executes with integer kernels, the model contract in
//! the ONNX metadata, and golden vectors for the cross-target tests.
//!
//! Data flows `float` (Burn → ONNX) → `equalize` (depthwise/pointwise channel balance) →
//! `calibrate` (activation ranges in tract) → `quantize` (QLinearConv rewrite); `options` says what
//! to do, `pipeline` runs it all with its checks and `report` tells what it measured; models run in
//! tract through `fer_runtime`.

pub mod calibrate;
pub mod equalize;
pub mod float;
pub mod graph;
pub mod options;
pub mod pipeline;
pub mod quantize;
pub mod report;

pub use options::ExportOptions;
pub use pipeline::export;
pub use report::ExportReport;
