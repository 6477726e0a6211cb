//! Training-time augmentation on 8-bit crops, before the shared preprocessing.
//!
//! Augmentation works on the raw grayscale crop so that its output goes through exactly the same
//! `fer_protocol::preprocess` as every evaluation image and every camera frame.

use rand::Rng;

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
}
