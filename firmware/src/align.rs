//! Face alignment: rotate by the eye line, crop a square around the face with the margin the
//! training crops have, convert to grayscale and hand it to the shared preprocessing.

use anyhow::Result;
use fer_protocol::INPUT;
use fer_protocol::preprocess::luma;
use image::RgbImage;

use crate::detect::Face;

/// Crop geometry relative to the detected box.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlignOptions {
    /// Crop side as a multiple of the detected box's larger side.
    pub scale: f32,
    /// Shift of the crop centre along the face's vertical axis, in box heights (positive is
    /// towards the chin).
    pub shift: f32,
    /// Rotate the crop so the eyes are level.
    pub rotate: bool,
}

impl Default for AlignOptions {
    /// Measured on 400 FER+ validation faces pasted into frames: the training crop is 1.17 box
    /// sides wide and centred 0.105 box heights above the box centre (docs/sensor.md,
    /// `cargo run -p fer-firmware --example crop_geometry`).
    fn default() -> Self {
        Self {
            scale: 1.2,
            shift: -0.1,
            rotate: true,
        }
    }
}

/// Largest crop side sampled from the frame; the shared preprocessing shrinks it to the model
/// input with an antialiasing filter, and more pixels than this add nothing at 48x48.
const MAX_CROP: usize = 4 * INPUT.width;

/// Turns a detected face into the model input, reusing its buffers across frames.
pub struct Aligner {
    options: AlignOptions,
    crop: Vec<u8>,
    side: usize,
}

impl Aligner {
    /// An aligner with these options.
    pub fn new(options: AlignOptions) -> Self {
        Self {
            options,
            crop: Vec::with_capacity(MAX_CROP * MAX_CROP),
            side: 0,
        }
    }

    /// The last grayscale crop (row-major, square) and its side.
    pub fn crop(&self) -> (&[u8], usize) {
        (&self.crop, self.side)
    }

    /// Cuts the aligned grayscale crop of `face` out of `frame` and preprocesses it into `input`
    /// ([`INPUT`]`.len()` values).
    pub fn align(&mut self, frame: &RgbImage, face: &Face, input: &mut [f32]) -> Result<()> {
        let [re, le] = [face.keypoints[0], face.keypoints[1]];
        let angle = if self.options.rotate {
            (le[1] - re[1]).atan2(le[0] - re[0])
        } else {
            0.0
        };
        let (sin, cos) = angle.sin_cos();
        let box_side = face.width.max(face.height);
        let side_px = (box_side * self.options.scale).max(1.0);
        // The crop centre, moved along the face's own vertical axis (rotated with it).
        let shift = self.options.shift * face.height;
        let (cx, cy) = (face.cx - sin * shift, face.cy + cos * shift);
        let n = (side_px.round() as usize).clamp(INPUT.width, MAX_CROP);
        let step = side_px / n as f32;
        self.crop.clear();
        self.side = n;
        for v in 0..n {
            for u in 0..n {
                // Crop pixel centre relative to the crop centre, rotated into the frame.
                let (dx, dy) = (
                    (u as f32 + 0.5) * step - side_px / 2.0,
                    (v as f32 + 0.5) * step - side_px / 2.0,
                );
                let x = cx + dx * cos - dy * sin;
                let y = cy + dx * sin + dy * cos;
                self.crop.push(luma(bilinear(frame, x, y)));
            }
        }
        crate::classify::preprocess(&self.crop, n, n, input)
    }
}

/// `x.floor()` as an integer, without the libm call `f32::floor` compiles to on x86-64's baseline
/// (no SSE4.1); on the host the crop went from 1.35 to 1.25 ms. ARM has a floor instruction.
fn floor(x: f32) -> i64 {
    let t = x as i64;
    if (t as f32) > x { t - 1 } else { t }
}

/// Bilinear sample at pixel-centre coordinates (x, y); outside the frame the edge repeats.
fn bilinear(frame: &RgbImage, x: f32, y: f32) -> [f32; 3] {
    let (w, h) = (frame.width() as i64, frame.height() as i64);
    let (fx, fy) = (x - 0.5, y - 0.5);
    let (x0, y0) = (floor(fx), floor(fy));
    let (ax, ay) = (fx - x0 as f32, fy - y0 as f32);
    let pixels = frame.as_raw();
    let at = |xi: i64, yi: i64| (yi as usize * w as usize + xi as usize) * 3;
    // Inside the frame (nearly every sample) the four neighbours are two adjacent pairs of pixels;
    // only the border needs the clamped lookups.
    let [i00, i10, i01, i11] = if x0 >= 0 && y0 >= 0 && x0 + 1 < w && y0 + 1 < h {
        let (top, bottom) = (at(x0, y0), at(x0, y0 + 1));
        [top, top + 3, bottom, bottom + 3]
    } else {
        let clamped = |xi: i64, yi: i64| at(xi.clamp(0, w - 1), yi.clamp(0, h - 1));
        [
            clamped(x0, y0),
            clamped(x0 + 1, y0),
            clamped(x0, y0 + 1),
            clamped(x0 + 1, y0 + 1),
        ]
    };
    let (p00, p10, p01, p11) = (
        &pixels[i00..i00 + 3],
        &pixels[i10..i10 + 3],
        &pixels[i01..i01 + 3],
        &pixels[i11..i11 + 3],
    );
    let mut out = [0.0; 3];
    for c in 0..3 {
        let top = p00[c] as f32 * (1.0 - ax) + p10[c] as f32 * ax;
        let bottom = p01[c] as f32 * (1.0 - ax) + p11[c] as f32 * ax;
        out[c] = top * (1.0 - ay) + bottom * ay;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn face_at(cx: f32, cy: f32, side: f32, eye_dy: f32) -> Face {
        let mut keypoints = [[cx, cy]; 6];
        keypoints[0] = [cx - side / 4.0, cy - eye_dy / 2.0];
        keypoints[1] = [cx + side / 4.0, cy + eye_dy / 2.0];
        Face {
            cx,
            cy,
            width: side,
            height: side,
            keypoints,
            score: 1.0,
        }
    }

    /// Aligns with the crop exactly the box (no scale, no shift): the aligner and the model input.
    fn align_unscaled(frame: &RgbImage, face: &Face) -> (Aligner, Vec<f32>) {
        let mut aligner = Aligner::new(AlignOptions {
            scale: 1.0,
            shift: 0.0,
            rotate: true,
        });
        let mut input = vec![0.0; INPUT.len()];
        aligner.align(frame, face, &mut input).unwrap();
        (aligner, input)
    }

    #[test]
    fn level_face_crop_is_the_box_scaled_around_its_centre() {
        // Left half dark, right half bright: the crop must keep that split at its middle.
        let frame = RgbImage::from_fn(200, 100, |x, _| {
            if x < 100 {
                image::Rgb([10, 10, 10])
            } else {
                image::Rgb([250, 250, 250])
            }
        });
        let (aligner, input) = align_unscaled(&frame, &face_at(100.0, 50.0, 60.0, 0.0));
        let (crop, n) = aligner.crop();
        assert_eq!(n, 60);
        assert_eq!(crop[30 * n + 5], 10);
        assert_eq!(crop[30 * n + 55], 250);
        assert!(input[0] < -0.9 && input[INPUT.width - 1] > 0.9);
    }

    #[test]
    fn a_tilted_face_is_levelled() {
        // Eyes on a 45° line; the frame is dark above that line and bright below it. Levelled,
        // the crop's top rows are dark and its bottom rows bright.
        let frame = RgbImage::from_fn(200, 200, |x, y| {
            if (y as i64 - x as i64) < 0 {
                image::Rgb([0, 0, 0])
            } else {
                image::Rgb([255, 255, 255])
            }
        });
        let (aligner, _) = align_unscaled(&frame, &face_at(100.0, 100.0, 80.0, 40.0));
        let (crop, n) = aligner.crop();
        assert!(crop[5 * n..6 * n].iter().all(|&p| p < 20), "top row not dark");
        assert!(
            crop[(n - 6) * n..(n - 5) * n].iter().all(|&p| p > 235),
            "bottom row not bright"
        );
    }
}
