//! The golden vectors hold on this target: preprocessing bit-exact, model outputs within the
//! stated tolerances, top-1 identical. Run on the host with `cargo test -p fer-golden` and on the
//! ARM targets with `--target aarch64-unknown-linux-gnu` / `armv7-unknown-linux-gnueabihf`.

use fer_golden::{
    F32_MODEL, F32_TOLERANCE, INT8_MODEL, INT8_TOLERANCE, Model, compare, golden, max_deviation, preprocess,
};

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
    for (bytes, precision) in [(F32_MODEL, "f32"), (INT8_MODEL, "int8")] {
        let info = Model::load(bytes).unwrap().info;
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
    for (bytes, tolerance, int8) in [(F32_MODEL, F32_TOLERANCE, false), (INT8_MODEL, INT8_TOLERANCE, true)] {
        let model = Model::load(bytes).unwrap();
        let mut worst = 0.0f32;
        for case in &golden.cases {
            let expected = if int8 { &case.int8 } else { &case.f32 };
            let got = model.run(&case.input).unwrap();
            compare(&case.name, &got, expected, tolerance).unwrap();
            worst = worst.max(max_deviation(&got, expected));
        }
        // The figure docs/results.md quotes per target (`-- --nocapture`).
        eprintln!("{}: max |Δ| {worst:.3e} (tolerance {tolerance})", model.info.precision);
    }
}

#[test]
fn a_drifting_output_is_caught() {
    // Brighten one golden face by four gray levels (1.6 %): the comparison must notice.
    let golden = golden().unwrap();
    let model = Model::load(F32_MODEL).unwrap();
    let mut case = golden.cases[0].clone();
    case.crop.iter_mut().for_each(|p| *p = p.saturating_add(4));
    let drifted = model.run(&preprocess(&case).unwrap()).unwrap();
    assert!(compare(&case.name, &drifted, &case.f32, F32_TOLERANCE).is_err());
}
