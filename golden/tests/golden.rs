//! The golden vectors hold on this target: preprocessing bit-exact, model outputs within the
//! stated tolerances, top-1 identical, the face detector's fixture faces in place, serial frames
//! byte-exact, and tract running its SIMD kernels for this CPU. Run on the host with
//! `cargo test -p fer-golden` and on the ARM targets with
//! `--target aarch64-unknown-linux-gnu` / `armv7-unknown-linux-gnueabihf`.

use fer_firmware::classify::Classifier;
use fer_firmware::detect::{DetectOptions, Detector};
use fer_firmware::golden::{F32_TOLERANCE, INT8_TOLERANCE, check_all, compare, preprocess};
use fer_firmware::selftest::{FIXTURE_FACES, FIXTURE_FRAME, FIXTURE_TOLERANCE, face_deviation, fixture_faces};
use fer_golden::{DETECTOR, F32_MODEL, INT8_MODEL, golden};
use fer_protocol::contract::Precision;
use fer_protocol::{Expression, Frame, Reading};

#[test]
fn preprocessing_is_bit_exact() {
    for case in golden().unwrap().cases {
        let input = preprocess(&case).unwrap();
        let same = input.iter().zip(&case.input).all(|(a, b)| a.to_bits() == b.to_bits());
        assert!(
            same && input.len() == case.input.len(),
            "{}: preprocessing drifted",
            case.name
        );
    }
}

#[test]
fn models_follow_the_contract_of_their_golden_vectors() {
    let golden = golden().unwrap();
    for (bytes, precision) in [(F32_MODEL, Precision::F32), (INT8_MODEL, Precision::Int8)] {
        let info = Classifier::from_bytes(bytes).unwrap().info;
        assert_eq!(info.precision, precision);
        assert_eq!(
            info.weights_sha256, golden.weights_sha256,
            "model and golden vectors are from different exports"
        );
        assert_eq!(info.version, golden.model_version);
    }
    assert_eq!(golden.contract, fer_protocol::contract::CONTRACT_VERSION);
}

#[test]
fn f32_and_int8_outputs_match_the_golden_vectors() {
    let golden = golden().unwrap();
    assert!(golden.cases.len() >= 7, "one face per expression at least");
    for (bytes, tolerance) in [(F32_MODEL, F32_TOLERANCE), (INT8_MODEL, INT8_TOLERANCE)] {
        let mut model = Classifier::from_bytes(bytes).unwrap();
        let worst = check_all(&golden, &mut model).unwrap();
        // The figure docs/export.md quotes per target (`-- --nocapture`).
        eprintln!("{}: max |Δ| {worst:.3e} (tolerance {tolerance})", model.info.precision);
    }
}

#[test]
fn a_drifting_output_is_caught() {
    // Brighten one golden face by four gray levels (1.6 %): the comparison must notice.
    let golden = golden().unwrap();
    let mut model = Classifier::from_bytes(F32_MODEL).unwrap();
    let mut case = golden.cases[0].clone();
    case.crop.iter_mut().for_each(|p| *p = p.saturating_add(4));
    let drifted = model.outputs(&preprocess(&case).unwrap()).unwrap();
    assert!(compare(&case.name, &drifted, &case.f32, F32_TOLERANCE).is_err());
}

#[test]
fn the_face_detector_finds_the_fixture_faces_in_place() {
    let mut detector = Detector::from_bytes(DETECTOR, DetectOptions::default()).unwrap();
    let frame = image::load_from_memory(FIXTURE_FRAME).unwrap().to_rgb8();
    let faces = detector.detect(&frame).unwrap();
    let expected = fixture_faces().unwrap();
    assert_eq!(expected.len(), 2, "{FIXTURE_FACES}");
    let worst = face_deviation(&faces, &expected).unwrap();
    eprintln!("blazeface: max |Δ| {worst:.3e} px (tolerance {FIXTURE_TOLERANCE})");
    assert!(worst <= FIXTURE_TOLERANCE, "fixture faces moved by {worst}");
    // A moved face is caught: shift the frame by one pixel.
    let shifted = image::imageops::crop_imm(&frame, 1, 0, frame.width() - 1, frame.height()).to_image();
    let moved = face_deviation(&detector.detect(&shifted).unwrap(), &expected).unwrap();
    assert!(
        moved > FIXTURE_TOLERANCE,
        "a one-pixel shift moved the faces by only {moved}"
    );
}

/// Serial frames and their exact bytes, computed independently of the Rust code (a ten-line
/// Python CRC-16/IBM-3740, checked against the standard "123456789" → 0x29B1) from the format
/// in `fer_protocol::wire`: CRC over bytes 1..7, little-endian.
const WIRE_FIXTURES: [(Frame, [u8; 9]); 3] = [
    (
        Frame {
            sequence: 0,
            reading: Reading::Expression(Expression::Happiness),
            confidence: 230,
            faces: 1,
        },
        [0xA5, 0x01, 0x00, 0x00, 0x03, 0xE6, 0x01, 0xD5, 0xB8],
    ),
    (
        Frame {
            sequence: 0x1234,
            reading: Reading::Uncertain,
            confidence: 77,
            faces: 2,
        },
        [0xA5, 0x01, 0x34, 0x12, 0xFE, 0x4D, 0x02, 0x16, 0x9B],
    ),
    (
        Frame {
            sequence: 0xFFFF,
            reading: Reading::NoFace,
            confidence: 0,
            faces: 0,
        },
        [0xA5, 0x01, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0xDF, 0x95],
    ),
];

#[test]
fn serial_frames_are_byte_exact() {
    for (frame, bytes) in WIRE_FIXTURES {
        assert_eq!(frame.encode(), bytes, "{frame:?}");
        assert_eq!(Frame::decode(&bytes), Ok(frame));
    }
}

#[test]
fn tract_runs_the_simd_kernels_of_this_cpu() {
    // The matrix-multiply kernels tract picked, by name, as the optimized plan prints them
    // (`... with [arm64simd_mmm_f32_16x4_gen]`). On aarch64 they are NEON kernels (`arm64*`), on
    // armv7 `armv7neon*`, on x86_64 `fma*`/`avx*`; tract's portable fallback is `generic*`.
    let expected: &[&str] = match std::env::consts::ARCH {
        "aarch64" => &["arm64"],
        "arm" => &["armv7neon"],
        "x86_64" => &["fma", "avx"],
        other => panic!("no expectation for {other}"),
    };
    for bytes in [F32_MODEL, INT8_MODEL] {
        let model = Classifier::from_bytes(bytes).unwrap();
        let kernels = model.kernels();
        eprintln!("{} kernels: {kernels:?}", model.info.precision);
        assert!(kernels.len() >= 8, "one kernel per conv at least: {kernels:?}");
        assert!(
            kernels.iter().all(|k| expected.iter().any(|e| k.starts_with(e))),
            "not all {expected:?}: {kernels:?}"
        );
    }
}
