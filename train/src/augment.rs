//! Training-time augmentation on 8-bit crops, before the shared preprocessing.
//!
//! Augmentation works on the raw grayscale crop so that its output goes through exactly the same
//! `fer_protocol::preprocess` as every evaluation image and every camera frame.

use rand::Rng;
use rand::seq::SliceRandom;
use rand_distr::{Beta, Distribution};

/// Augmentation strengths; [`Augment::default`] is what training uses.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Maximum rotation either way, degrees.
    pub max_rotation_deg: f32,
    /// Zoom range: the crop is scaled by a factor in `[1 - scale, 1 + scale]`.
    pub scale: f32,
    /// Maximum shift either way, as a fraction of the crop size (random crop).
    pub shift: f32,
    /// Mirror left-right with probability 1/2.
    pub flip: bool,
    /// Maximum brightness change either way, in 8-bit levels.
    pub brightness: f32,
    /// Contrast factor range `[1 - contrast, 1 + contrast]`.
    pub contrast: f32,
    /// Probability of random erasing (Zhong et al. 2020): a rectangle of 2–25 % of the crop,
    /// aspect ratio 0.3–3.3, replaced by noise, so no one facial region can carry a decision.
    /// Absent in run folders written before it existed, which trained without it.
    #[serde(default)]
    pub erase: f32,
    /// Mixing of two faces of a batch (mixup or CutMix); absent in run folders written before
    /// it existed, which trained without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mix: Option<Mix>,
}

impl Default for Augment {
    fn default() -> Self {
        Self {
            max_rotation_deg: 10.0,
            scale: 0.1,
            shift: 0.08,
            flip: true,
            brightness: 25.0,
            contrast: 0.25,
            erase: 0.0,
            mix: None,
        }
    }
}

impl Augment {
    /// Writes a randomly transformed copy of `src` (`width * height`) into `dst` (same size).
    pub fn apply(&self, src: &[u8], width: usize, height: usize, rng: &mut impl Rng, dst: &mut Vec<u8>) {
        let angle = rng
            .random_range(-self.max_rotation_deg..=self.max_rotation_deg)
            .to_radians();
        let zoom = rng.random_range(1.0 - self.scale..=1.0 + self.scale);
        let tx = rng.random_range(-self.shift..=self.shift) * width as f32;
        let ty = rng.random_range(-self.shift..=self.shift) * height as f32;
        let flip = self.flip && rng.random_bool(0.5);
        let gain = rng.random_range(1.0 - self.contrast..=1.0 + self.contrast);
        let offset = rng.random_range(-self.brightness..=self.brightness);

        // Inverse mapping: for each output pixel, where it comes from in the source.
        let (cx, cy) = (width as f32 / 2.0, height as f32 / 2.0);
        let (sin, cos) = (angle.sin() / zoom, angle.cos() / zoom);
        dst.clear();
        dst.reserve(width * height);
        for y in 0..height {
            for x in 0..width {
                let ox = if flip { width - 1 - x } else { x } as f32 + 0.5 - cx - tx;
                let oy = y as f32 + 0.5 - cy - ty;
                let sx = cos * ox + sin * oy + cx - 0.5;
                let sy = -sin * ox + cos * oy + cy - 0.5;
                let v = bilinear(src, width, height, sx, sy);
                dst.push(((v - 128.0) * gain + 128.0 + offset).clamp(0.0, 255.0).round() as u8);
            }
        }
        // Drawn only when on, so that runs without erasing draw what they always drew.
        if self.erase > 0.0 && rng.random_bool(f64::from(self.erase.min(1.0))) {
            erase(dst, width, height, rng);
        }
    }
}

/// How two faces of a batch become one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MixKind {
    /// mixup (Zhang et al. 2018): the two inputs blended, `λ·a + (1 − λ)·b`.
    Mixup,
    /// CutMix (Yun et al. 2019): a box of `b` covering `1 − λ` of the crop pasted into `a`.
    CutMix,
}

/// Batch-level mixing against mixed targets: each face, with probability `prob`, is mixed with
/// another face of its batch in a share `λ ~ Beta(alpha, alpha)`, and its target row becomes
/// `λ·t_a + (1 − λ)·t_b` (the vote distributions, so the soft targets stay soft).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Mix {
    /// mixup or CutMix.
    pub kind: MixKind,
    /// α of the Beta distribution λ is drawn from (small: mostly one face; 1: uniform).
    pub alpha: f32,
    /// Probability that a face is mixed at all.
    pub prob: f32,
}

impl Mix {
    /// Mixes a batch in place: `inputs` is `[n, height·width]` (one channel), `targets`
    /// `[n, k]`, `labels` `[n]`. A mixed face takes the label of the face with the larger
    /// share, which is the class the triplet-center loss pulls its embedding towards.
    pub fn apply(
        &self,
        inputs: &mut [f32],
        targets: &mut [f32],
        labels: &mut [i64],
        (width, height): (usize, usize),
        rng: &mut impl Rng,
    ) {
        let n = labels.len();
        if n < 2 || self.prob <= 0.0 {
            return;
        }
        let (pixels, k) = (width * height, targets.len() / n);
        let beta = Beta::new(self.alpha, self.alpha).expect("Mix::alpha is validated positive");
        // Partners read the batch as it was, not as already mixed.
        let (clean_inputs, clean_targets, clean_labels) = (inputs.to_vec(), targets.to_vec(), labels.to_vec());
        let mut partners: Vec<usize> = (0..n).collect();
        partners.shuffle(rng);
        for (i, &j) in partners.iter().enumerate() {
            if i == j || !rng.random_bool(f64::from(self.prob.min(1.0))) {
                continue;
            }
            let mut lambda: f32 = beta.sample(rng);
            let (a, b) = (
                &mut inputs[i * pixels..(i + 1) * pixels],
                &clean_inputs[j * pixels..(j + 1) * pixels],
            );
            match self.kind {
                MixKind::Mixup => a
                    .iter_mut()
                    .zip(b)
                    .for_each(|(a, b)| *a = lambda * *a + (1.0 - lambda) * b),
                MixKind::CutMix => {
                    let side = (1.0 - lambda).sqrt();
                    let w = ((side * width as f32).round() as usize).min(width);
                    let h = ((side * height as f32).round() as usize).min(height);
                    let (x0, y0) = (rng.random_range(0..=width - w), rng.random_range(0..=height - h));
                    for y in y0..y0 + h {
                        a[y * width + x0..y * width + x0 + w].copy_from_slice(&b[y * width + x0..y * width + x0 + w]);
                    }
                    // The share the pasted box really has, after rounding to whole pixels.
                    lambda = 1.0 - (w * h) as f32 / pixels as f32;
                }
            }
            for (t, (ta, tb)) in targets[i * k..(i + 1) * k].iter_mut().zip(
                clean_targets[i * k..(i + 1) * k]
                    .iter()
                    .zip(&clean_targets[j * k..(j + 1) * k]),
            ) {
                *t = lambda * ta + (1.0 - lambda) * tb;
            }
            if lambda < 0.5 {
                labels[i] = clean_labels[j];
            }
        }
    }
}

/// Replaces a random rectangle of 2–25 % of the crop, aspect ratio 0.3–3.3, with uniform noise.
fn erase(pixels: &mut [u8], width: usize, height: usize, rng: &mut impl Rng) {
    let area = rng.random_range(0.02f32..=0.25) * (width * height) as f32;
    let aspect = rng.random_range(0.3f32.ln()..=3.3f32.ln()).exp();
    let w = ((area * aspect).sqrt().round() as usize).clamp(1, width);
    let h = ((area / aspect).sqrt().round() as usize).clamp(1, height);
    let (x0, y0) = (rng.random_range(0..=width - w), rng.random_range(0..=height - h));
    for row in pixels[y0 * width..].chunks_exact_mut(width).take(h) {
        for p in &mut row[x0..x0 + w] {
            *p = rng.random();
        }
    }
}

/// Bilinear sample with edge pixels repeated outside the crop.
fn bilinear(src: &[u8], width: usize, height: usize, x: f32, y: f32) -> f32 {
    let x = x.clamp(0.0, (width - 1) as f32);
    let y = y.clamp(0.0, (height - 1) as f32);
    let (x0, y0) = (x.floor() as usize, y.floor() as usize);
    let (x1, y1) = ((x0 + 1).min(width - 1), (y0 + 1).min(height - 1));
    let (fx, fy) = (x - x0 as f32, y - y0 as f32);
    let p = |xx: usize, yy: usize| src[yy * width + xx] as f32;
    let top = p(x0, y0) * (1.0 - fx) + p(x1, y0) * fx;
    let bottom = p(x0, y1) * (1.0 - fx) + p(x1, y1) * fx;
    top * (1.0 - fy) + bottom * fy
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Every transform off.
    const NONE: Augment = Augment {
        max_rotation_deg: 0.0,
        scale: 0.0,
        shift: 0.0,
        flip: false,
        brightness: 0.0,
        contrast: 0.0,
        erase: 0.0,
        mix: None,
    };

    #[test]
    fn no_op_settings_are_identity() {
        let src: Vec<u8> = (0..48 * 48).map(|i| (i % 251) as u8).collect();
        let mut dst = Vec::new();
        NONE.apply(&src, 48, 48, &mut rand::rngs::SmallRng::seed_from_u64(1), &mut dst);
        assert_eq!(src, dst);
    }

    #[test]
    fn flip_mirrors_and_default_changes_pixels() {
        let flip = Augment { flip: true, ..NONE };
        let src: Vec<u8> = (0..4 * 2).map(|i| (i * 30) as u8).collect();
        let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
        let mut dst = Vec::new();
        let mut seen_flip = false;
        for _ in 0..8 {
            flip.apply(&src, 4, 2, &mut rng, &mut dst);
            if dst != src {
                assert_eq!(dst, [90, 60, 30, 0, 210, 180, 150, 120]);
                seen_flip = true;
            }
        }
        assert!(seen_flip);
        Augment::default().apply(&src, 4, 2, &mut rng, &mut dst);
        assert_eq!(dst.len(), src.len());
    }

    #[test]
    fn erasing_replaces_one_rectangle_and_only_when_on() {
        let only_erase = |erase| Augment { erase, ..NONE };
        let src = vec![128u8; 48 * 48];
        let mut rng = rand::rngs::SmallRng::seed_from_u64(5);
        let mut dst = Vec::new();
        for _ in 0..20 {
            only_erase(1.0).apply(&src, 48, 48, &mut rng, &mut dst);
            let changed: Vec<(usize, usize)> = (0..48 * 48)
                .filter(|&i| dst[i] != 128)
                .map(|i| (i % 48, i / 48))
                .collect();
            // Noise leaves about 1 pixel in 256 at 128: the changed ones span one rectangle.
            let (x0, x1) = (
                changed.iter().map(|c| c.0).min().unwrap(),
                changed.iter().map(|c| c.0).max().unwrap(),
            );
            let (y0, y1) = (
                changed.iter().map(|c| c.1).min().unwrap(),
                changed.iter().map(|c| c.1).max().unwrap(),
            );
            let span = (x1 - x0 + 1) * (y1 - y0 + 1);
            assert!(changed.len() * 100 >= span * 95, "{} of {span}", changed.len());
            // 2–25 % of 2,304 pixels, give or take the rounding of each side to whole pixels.
            assert!((30..=650).contains(&span), "{span} pixels");
        }
        only_erase(0.0).apply(&src, 48, 48, &mut rng, &mut dst);
        assert_eq!(dst, src, "off: nothing erased");
    }

    /// A batch of `n` constant faces (face `i` all `i`), one-hot targets, labels `i`.
    fn batch(n: usize, pixels: usize) -> (Vec<f32>, Vec<f32>, Vec<i64>) {
        let inputs = (0..n).flat_map(|i| vec![i as f32; pixels]).collect();
        let targets = (0..n)
            .flat_map(|i| (0..n).map(move |c| f32::from(u8::from(c == i))))
            .collect();
        (inputs, targets, (0..n as i64).collect())
    }

    #[test]
    fn mixing_keeps_each_targets_mass_and_matches_inputs_to_targets() {
        let (n, (w, h)) = (6, (8, 8));
        for kind in [MixKind::Mixup, MixKind::CutMix] {
            let mix = Mix {
                kind,
                alpha: 1.0,
                prob: 1.0,
            };
            let mut rng = rand::rngs::SmallRng::seed_from_u64(9);
            let mut mixed_faces = 0;
            for _ in 0..20 {
                let (mut inputs, mut targets, mut labels) = batch(n, w * h);
                mix.apply(&mut inputs, &mut targets, &mut labels, (w, h), &mut rng);
                for i in 0..n {
                    let row = &targets[i * n..(i + 1) * n];
                    assert!((row.iter().sum::<f32>() - 1.0).abs() < 1e-5, "{kind:?}: {row:?}");
                    // Face i's pixels average to what its target row says it is made of.
                    let face = &inputs[i * w * h..(i + 1) * w * h];
                    let mean = face.iter().sum::<f32>() / (w * h) as f32;
                    let expected: f32 = row.iter().enumerate().map(|(c, t)| c as f32 * t).sum();
                    assert!((mean - expected).abs() < 1e-4, "{kind:?}: {mean} vs {expected}");
                    // The label is the larger share.
                    let top = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap();
                    assert!(row[labels[i] as usize] >= *top.1 - 1e-6, "{kind:?}: {labels:?} {row:?}");
                    mixed_faces += usize::from(row[i] < 1.0);
                    if kind == MixKind::CutMix {
                        // Pixels are whole faces' values: pasted, never blended.
                        assert!(face.iter().all(|p| p.fract() == 0.0));
                    }
                }
            }
            assert!(mixed_faces > 40, "{kind:?}: only {mixed_faces} of 120 faces mixed");
        }
    }

    #[test]
    fn mixing_with_probability_zero_changes_nothing() {
        let (mut inputs, mut targets, mut labels) = batch(4, 16);
        let before = (inputs.clone(), targets.clone(), labels.clone());
        let mix = Mix {
            kind: MixKind::Mixup,
            alpha: 0.2,
            prob: 0.0,
        };
        mix.apply(
            &mut inputs,
            &mut targets,
            &mut labels,
            (4, 4),
            &mut rand::rngs::SmallRng::seed_from_u64(1),
        );
        assert_eq!((inputs, targets, labels), before);
    }
}
