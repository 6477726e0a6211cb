//! Measures how the detector's box relates to the training crop, and how often the whole
//! camera path (detect → align → classify) agrees with classifying the training crop directly.
//! Each FER+ validation face is pasted, at a random place and size, into a 640x480 frame.
//!
//!   cargo run -p fer-firmware --release --example crop_geometry -- ../shared/data/ferplus/FER2013Valid 600
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fer_firmware::align::{AlignOptions, Aligner};
use fer_firmware::classify::{Classifier, preprocess};
use fer_firmware::detect::{DetectOptions, Detector};
use fer_protocol::INPUT;
use fer_protocol::scores::argmax;
use image::imageops::{self, FilterType};
use image::{Rgb, RgbImage};

fn median(values: &mut [f32]) -> f32 {
    values.sort_by(f32::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).context("usage: crop_geometry FER2013Valid-DIR [COUNT]")?);
    let count: usize = args.get(2).map_or(Ok(600), |c| c.parse())?;
    let mut files = fer_firmware::source::files::list(&format!("{}/*.png", dir.display()))?;
    files.truncate(count);
    let mut detector = Detector::load(
        Path::new("models/blazeface/face_detection_short_range.onnx"),
        DetectOptions::default(),
    )?;
    let mut classifier = Classifier::load(Path::new("models/fer.f32.onnx"))?;
    let scales = [1.1f32, 1.15, 1.2, 1.25, 1.3];
    let shifts = [-0.1f32, -0.05, 0.0];
    let rotations = [true, false];
    let mut aligners: Vec<(AlignOptions, Aligner)> = scales
        .iter()
        .flat_map(|&scale| {
            shifts
                .iter()
                .flat_map(move |&shift| rotations.map(|rotate| AlignOptions { scale, shift, rotate }))
        })
        .map(|o| (o, Aligner::new(o)))
        .collect();
    let mut agree = vec![0usize; aligners.len()];
    let (mut ratio, mut dx, mut dy) = (Vec::new(), Vec::new(), Vec::new());
    let mut rng = 0x2545F4914F6CDD1Du64;
    let mut next = |n: u32| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % n as u64) as u32
    };
    let mut input = vec![0.0; INPUT.len()];
    for file in &files {
        let crop = image::open(file)?.to_luma8();
        preprocess(crop.as_raw(), crop.width() as usize, crop.height() as usize, &mut input)?;
        let direct = argmax(&classifier.classify(&input)?.probabilities);
        let side = 120 + next(140);
        let (x, y) = (next(640 - side), next(480 - side));
        let mut frame = RgbImage::from_fn(640, 480, |u, v| Rgb([(70 + u / 8) as u8, (90 + v / 6) as u8, 120]));
        let face = imageops::resize(&crop, side, side, FilterType::CatmullRom);
        for (u, v, p) in face.enumerate_pixels() {
            frame.put_pixel(x + u, y + v, Rgb([p[0]; 3]));
        }
        let Some(found) = detector.detect(&frame)?.into_iter().next() else {
            continue;
        };
        let box_side = found.width.max(found.height);
        ratio.push(side as f32 / box_side);
        dx.push((x as f32 + side as f32 / 2.0 - found.cx) / box_side);
        dy.push((y as f32 + side as f32 / 2.0 - found.cy) / found.height);
        for (i, (_, aligner)) in aligners.iter_mut().enumerate() {
            aligner.align(&frame, &found, &mut input)?;
            agree[i] += usize::from(argmax(&classifier.classify(&input)?.probabilities) == direct);
        }
    }
    let found = ratio.len();
    println!(
        "faces detected: {found} of {} ({:.1} %)",
        files.len(),
        100.0 * found as f32 / files.len() as f32
    );
    println!("crop side / box side: median {:.3}", median(&mut ratio));
    println!(
        "crop centre - box centre: x {:+.3}, y {:+.3} box heights (median)",
        median(&mut dx),
        median(&mut dy)
    );
    println!("top-1 agreement of the camera path with the training crop, by align settings:");
    for ((o, _), n) in aligners.iter().zip(&agree) {
        println!(
            "  scale {:.2} shift {:+.2} rotate {:5}: {:.1} %",
            o.scale,
            o.shift,
            o.rotate,
            100.0 * *n as f32 / found.max(1) as f32
        );
    }
    Ok(())
}
