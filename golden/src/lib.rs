//! Golden-output fixtures shared by the host and the device targets.
//!
//! The shipped models, their golden vectors and the face detector are compiled into the test
//! binary (`include_bytes!`), so the same binary runs under qemu here and when copied to a Pi,
//! with no files to carry along. The checks and tolerances themselves live in
//! [`fer_firmware::golden`] and [`fer_firmware::selftest`], where `fer-sensor selftest` uses them
//! on a device too.

use anyhow::Result;
use fer_protocol::golden::GoldenSet;

/// The shipped f32 model.
pub const F32_MODEL: &[u8] = include_bytes!("../../models/fer.f32.onnx");
/// The shipped int8 model.
pub const INT8_MODEL: &[u8] = include_bytes!("../../models/fer.int8.onnx");
/// Their golden vectors, written by fer-export together with the models.
pub const GOLDEN: &[u8] = include_bytes!("../../models/fer.golden.json");
/// The BlazeFace face detector.
pub const DETECTOR: &[u8] = include_bytes!("../../models/blazeface/face_detection_short_range.onnx");

/// The golden vectors.
pub fn golden() -> Result<GoldenSet> {
    fer_firmware::golden::parse(GOLDEN)
}
