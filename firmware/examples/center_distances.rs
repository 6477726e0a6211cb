//! Percentiles of the distance from a face's embedding to its nearest class center, over a
//! folder of face crops: the basis of `decide.max_center_distance`.
//!
//!   cargo run -p fer-firmware --example center_distances -- ../shared/data/ferplus/FER2013Valid models/fer.int8.onnx
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use fer_firmware::classify::{Classifier, preprocess};
use fer_protocol::INPUT;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let dir = PathBuf::from(args.get(1).context("usage: center_distances CROPS-DIR [MODEL]")?);
    let model = args.get(2).map_or("models/fer.f32.onnx", String::as_str);
    let mut classifier = Classifier::load(Path::new(model))?;
    let files = fer_firmware::source::files::list(&format!("{}/*.png", dir.display()))?;
    let mut input = vec![0.0; INPUT.len()];
    let mut nearest = Vec::with_capacity(files.len());
    for file in &files {
        let crop = image::open(file)?.to_luma8();
        preprocess(crop.as_raw(), crop.width() as usize, crop.height() as usize, &mut input)?;
        nearest.push(classifier.classify(&input)?.nearest_center_sq());
    }
    nearest.sort_by(f32::total_cmp);
    let at = |q: f32| nearest[((nearest.len() - 1) as f32 * q) as usize];
    println!("{} faces, {model}: nearest-center squared distance", nearest.len());
    for q in [0.5, 0.9, 0.95, 0.99, 0.999] {
        println!("  {:5.1} %: {:.1}", q * 100.0, at(q));
    }
    println!("  max    : {:.1}", nearest[nearest.len() - 1]);
    Ok(())
}
