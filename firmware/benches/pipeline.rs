//! One 640x480 frame with one face through the sensor, per stage and whole, with the f32 and the
//! int8 classifier: `cargo bench -p fer-firmware --bench pipeline`.
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use fer_firmware::align::Aligner;
use fer_firmware::classify::Classifier;
use fer_firmware::config::Config;
use fer_firmware::detect::{DetectOptions, Detector};
use fer_firmware::sensor::Sensor;
use fer_protocol::INPUT;
use fer_protocol::contract::Precision;

fn root(path: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn bench(c: &mut Criterion) {
    let frame = image::open(root("samples/04-happiness.png"))
        .expect("sample frame")
        .to_rgb8();
    let detector_path = root("models/blazeface/face_detection_short_range.onnx");
    let mut detector = Detector::load(&detector_path, DetectOptions::default()).unwrap();
    let face = detector.detect(&frame).unwrap()[0];
    let mut aligner = Aligner::new(Default::default());
    let mut input = vec![0.0; INPUT.len()];

    let mut group = c.benchmark_group("frame 640x480, one face");
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("detect", |b| b.iter(|| detector.detect(&frame).unwrap()));
    // The letterbox inside detect (resize to 128x96, scale into the input tensor), to split
    // image work from the network.
    group.bench_function("detect: letterbox to 128x128", |b| {
        b.iter(|| detector.prepare(&frame).unwrap());
    });
    group.bench_function("align", |b| {
        b.iter(|| aligner.align(&frame, &face, &mut input).unwrap());
    });
    for precision in Precision::ALL {
        let path = root(&format!("models/fer.{}", precision.file_suffix()));
        let mut classifier = Classifier::load(&path).unwrap();
        group.bench_function(format!("classify {precision}"), |b| {
            b.iter(|| classifier.classify(&input).unwrap());
        });
        let mut config = Config::default();
        config.model.classifier = path;
        config.model.detector = detector_path.clone();
        let mut sensor = Sensor::load(&config).unwrap();
        group.bench_function(format!("whole frame {precision}"), |b| {
            b.iter(|| sensor.process(&frame, Duration::ZERO).unwrap());
        });
        // The steady state with the detector on every third frame (the mean over frames).
        config.detect.every_frames = 3;
        let mut sensor = Sensor::load(&config).unwrap();
        group.bench_function(format!("steady frame {precision}, detect every 3"), |b| {
            b.iter(|| sensor.process(&frame, Duration::ZERO).unwrap());
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
