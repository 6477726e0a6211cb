//! Writes the bundled sample frames (`samples/`): the golden FER+ faces of the shipped model
//! pasted into 640x480 frames, with `samples/faces.json` saying where each face is, and the
//! detector fixture `firmware/fixtures/blazeface-faces.json` (what this host's detector finds
//! in the two-face frame). Run from the repository root:
//!
//!   cargo run -p fer-firmware --example make_samples
use std::path::Path;

use anyhow::{Context, Result};
use fer_firmware::detect::{DetectOptions, Detector};
use fer_firmware::selftest::FaceJson;
use image::imageops::{self, FilterType};
use image::{GrayImage, Rgb, RgbImage};

/// Frame size of the samples, a common webcam mode.
const FRAME: (u32, u32) = (640, 480);

/// One pasted face: which golden case, the square's top-left corner and side.
#[derive(serde::Serialize)]
struct Placed {
    case: String,
    label: String,
    x: u32,
    y: u32,
    side: u32,
}

#[derive(serde::Serialize)]
struct Sample {
    file: String,
    faces: Vec<Placed>,
}

fn background() -> RgbImage {
    RgbImage::from_fn(FRAME.0, FRAME.1, |x, y| {
        Rgb([(70 + x / 8) as u8, (90 + y / 6) as u8, 120])
    })
}

fn paste(frame: &mut RgbImage, case: &fer_protocol::golden::GoldenCase, x: u32, y: u32, side: u32) -> Placed {
    let crop =
        GrayImage::from_raw(case.width as u32, case.height as u32, case.crop.clone()).expect("crop size matches");
    let face = imageops::resize(&crop, side, side, FilterType::CatmullRom);
    for (dx, dy, p) in face.enumerate_pixels() {
        frame.put_pixel(x + dx, y + dy, Rgb([p[0]; 3]));
    }
    Placed {
        case: case.name.clone(),
        label: case.label.clone(),
        x,
        y,
        side,
    }
}

fn main() -> Result<()> {
    let golden =
        fer_firmware::golden::parse(&std::fs::read("models/fer.golden.json").context("run from the repository root")?)?;
    let out = Path::new("samples");
    std::fs::create_dir_all(out)?;
    let mut samples = Vec::new();
    // One face per frame, at sizes and places a desk camera sees.
    let spots = [
        (240, 120, 160),
        (80, 60, 200),
        (400, 200, 180),
        (200, 150, 220),
        (300, 40, 140),
        (120, 240, 170),
        (360, 100, 240),
        (60, 120, 150),
    ];
    for (i, (case, &(x, y, side))) in golden.cases.iter().zip(&spots).enumerate() {
        let mut frame = background();
        let placed = paste(&mut frame, case, x, y, side);
        let file = format!("{:02}-{}.png", i + 1, case.label);
        frame.save(out.join(&file))?;
        samples.push(Sample {
            file,
            faces: vec![placed],
        });
    }
    // Two faces: the larger one is published by default.
    let mut frame = background();
    let happy = golden
        .cases
        .iter()
        .find(|c| c.label == "happiness")
        .context("a happy golden face")?;
    let surprised = golden
        .cases
        .iter()
        .find(|c| c.label == "surprise")
        .context("a surprised golden face")?;
    let faces = vec![
        paste(&mut frame, happy, 330, 110, 220),
        paste(&mut frame, surprised, 60, 160, 130),
    ];
    let file = "09-two-faces.png".to_string();
    frame.save(out.join(&file))?;
    samples.push(Sample {
        file: file.clone(),
        faces,
    });
    // An empty scene.
    background().save(out.join("10-no-face.png"))?;
    samples.push(Sample {
        file: "10-no-face.png".into(),
        faces: vec![],
    });
    std::fs::write(out.join("faces.json"), serde_json::to_string_pretty(&samples)? + "\n")?;

    let mut detector = Detector::load(
        Path::new("models/blazeface/face_detection_short_range.onnx"),
        DetectOptions::default(),
    )?;
    let found = detector.detect(&image::open(out.join(&file))?.to_rgb8())?;
    let json: Vec<FaceJson> = found.iter().map(FaceJson::from).collect();
    std::fs::write(
        "firmware/fixtures/blazeface-faces.json",
        serde_json::to_string_pretty(&json)? + "\n",
    )?;
    println!(
        "wrote {} samples; {} faces in the fixture frame",
        samples.len(),
        found.len()
    );
    Ok(())
}
