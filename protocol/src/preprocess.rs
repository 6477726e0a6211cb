//! Face crop → model input. Training feeds every image through this, and so does the device.

use core::fmt;

use crate::input::InputSpec;

/// Why a crop could not be preprocessed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreprocessError {
    /// The crop has zero width or height.
    EmptyImage,
    /// `pixels.len()` is not `width * height`.
    PixelCount {
        /// `width * height`.
        expected: usize,
        /// The length that was passed.
        got: usize,
    },
    /// The output buffer is not [`InputSpec::len`] long.
    OutputLen {
        /// [`InputSpec::len`].
        expected: usize,
        /// The length that was passed.
        got: usize,
    },
    /// The spec asks for more than one channel; preprocessing is grayscale only.
    Channels(usize),
}

impl fmt::Display for PreprocessError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EmptyImage => f.write_str("face crop is empty (zero width or height)"),
            Self::PixelCount { expected, got } => {
                write!(f, "face crop has {got} pixels, its size says {expected}")
            }
            Self::OutputLen { expected, got } => {
                write!(f, "model input buffer holds {got} values, the input needs {expected}")
            }
            Self::Channels(c) => write!(f, "preprocessing is grayscale only, spec asks for {c} channels"),
        }
    }
}

impl core::error::Error for PreprocessError {}

/// The gray level of a colour (channels 0..=255, whole or interpolated) with Rec. 709 weights,
/// rounded: how training's image loader and the device's crop both turn colour into the model's
/// gray, so a colour camera sees the gray the model was trained on.
pub fn luma([r, g, b]: [f32; 3]) -> u8 {
    // `+ 0.5` and the saturating cast round a non-negative value as `f32::round` does, which
    // `no_std` lacks.
    (0.2126 * r + 0.7152 * g + 0.0722 * b + 0.5) as u8
}

/// Resizes an 8-bit grayscale crop (row-major, `width * height` bytes) to the spec's size and
/// normalises it into `out` (`spec.len()` values, row-major).
///
/// Resampling is a triangle (bilinear) filter whose support widens with the downscale factor, so
/// shrinking a large camera crop averages over it instead of aliasing; at equal size it is the
/// identity. Any crop size works, including upscaling.
pub fn preprocess(
    spec: &InputSpec,
    pixels: &[u8],
    width: usize,
    height: usize,
    out: &mut [f32],
) -> Result<(), PreprocessError> {
    if spec.channels != 1 {
        return Err(PreprocessError::Channels(spec.channels));
    }
    if width == 0 || height == 0 {
        return Err(PreprocessError::EmptyImage);
    }
    if pixels.len() != width * height {
        return Err(PreprocessError::PixelCount {
            expected: width * height,
            got: pixels.len(),
        });
    }
    if out.len() != spec.len() {
        return Err(PreprocessError::OutputLen {
            expected: spec.len(),
            got: out.len(),
        });
    }
    let x_axis = Axis::new(width, spec.width);
    let y_axis = Axis::new(height, spec.height);
    for (oy, row) in out.chunks_exact_mut(spec.width).enumerate() {
        // The filter is separable: a tap's weight is its row's weight times its column's, so
        // both are computed once per output row or pixel instead of once per tap (a division).
        let mut row_weights = [0.0f32; MAX_TAPS];
        let rows = y_axis.weights(oy, &mut row_weights);
        for (ox, value) in row.iter_mut().enumerate() {
            let mut col_weights = [0.0f32; MAX_TAPS];
            let gray = match (rows, x_axis.weights(ox, &mut col_weights)) {
                (Some((y0, wy)), Some((x0, wx))) => {
                    // The direct path's arithmetic, in its order: the result is bit-identical
                    // (golden vectors hold preprocessed inputs and are compared exactly).
                    let (mut sum, mut weight) = (0.0f32, 0.0f32);
                    for (sy, &w_row) in (y0..).zip(wy) {
                        for (&w_col, &p) in wx.iter().zip(&pixels[sy * width + x0..]) {
                            let w = w_row * w_col;
                            sum += w * p as f32;
                            weight += w;
                        }
                    }
                    sum / weight
                }
                _ => direct(&x_axis, &y_axis, ox, oy, pixels, width),
            };
            *value = spec.normalise(gray);
        }
    }
    Ok(())
}

/// Most taps per axis kept on the stack: a shrink by up to about 30x. Larger shrinks (training on
/// big photos) take the direct path, which computes every tap's weight where it is used.
const MAX_TAPS: usize = 64;

/// The filtered gray level of output pixel (ox, oy), every tap's weight computed where it is used.
fn direct(x_axis: &Axis, y_axis: &Axis, ox: usize, oy: usize, pixels: &[u8], width: usize) -> f32 {
    let (x0, x1) = x_axis.window(ox);
    let (y0, y1) = y_axis.window(oy);
    let mut sum = 0.0f32;
    let mut weight = 0.0f32;
    for sy in y0..y1 {
        let wy = y_axis.weight(oy, sy);
        for (sx, &p) in pixels[sy * width..(sy + 1) * width]
            .iter()
            .enumerate()
            .take(x1)
            .skip(x0)
        {
            let w = wy * x_axis.weight(ox, sx);
            sum += w * p as f32;
            weight += w;
        }
    }
    sum / weight
}

/// Resampling geometry along one axis.
struct Axis {
    src: usize,
    scale: f32,
    support: f32,
}

impl Axis {
    fn new(src: usize, dst: usize) -> Self {
        let scale = src as f32 / dst as f32;
        Self {
            src,
            scale,
            support: scale.max(1.0),
        }
    }

    fn center(&self, o: usize) -> f32 {
        (o as f32 + 0.5) * self.scale
    }

    /// Source pixels `[start, end)` that may carry weight for output pixel `o`.
    fn window(&self, o: usize) -> (usize, usize) {
        let c = self.center(o);
        let start = libm_floor(c - self.support).max(0.0) as usize;
        let end = (libm_ceil(c + self.support) as usize).min(self.src);
        // Upscaling near a border can leave only pixels with zero weight: clamp to the edge one.
        let start = start.min(self.src - 1);
        (start, end.max(start + 1))
    }

    /// The first source pixel of output pixel `o`'s window and the window's weights, written into
    /// `buf`; `None` when the window is longer than `buf`.
    fn weights<'a>(&self, o: usize, buf: &'a mut [f32; MAX_TAPS]) -> Option<(usize, &'a [f32])> {
        let (start, end) = self.window(o);
        let weights = buf.get_mut(..end - start)?;
        for (w, s) in weights.iter_mut().zip(start..) {
            *w = self.weight(o, s);
        }
        Some((start, weights))
    }

    fn weight(&self, o: usize, s: usize) -> f32 {
        let d = ((s as f32 + 0.5) - self.center(o)).abs() / self.support;
        // A tiny floor keeps edge pixels in play when upscaling past the border.
        (1.0 - d).max(0.0) + 1e-6
    }
}

// `f32::floor`/`ceil` need std; these are exact for the non-negative-ish ranges used here.
fn libm_floor(x: f32) -> f32 {
    let t = x as i64 as f32;
    if t > x { t - 1.0 } else { t }
}

fn libm_ceil(x: f32) -> f32 {
    let t = x as i64 as f32;
    if t < x { t + 1.0 } else { t }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;
    use crate::INPUT;

    #[test]
    fn luma_keeps_grays_and_weighs_green_most() {
        for v in 0..=255u8 {
            assert_eq!(luma([f32::from(v); 3]), v);
        }
        assert_eq!(luma([255.0, 0.0, 0.0]), 54);
        assert_eq!(luma([0.0, 255.0, 0.0]), 182);
        assert_eq!(luma([0.0, 0.0, 255.0]), 18);
        assert_eq!(luma([0.0, 6.0, 183.0]), 18); // 17.50: rounded, not truncated
    }

    #[test]
    fn identity_at_input_size() {
        let pixels: [u8; 48 * 48] = core::array::from_fn(|i| (i * 7 % 256) as u8);
        let mut out = [0.0f32; 48 * 48];
        preprocess(&INPUT, &pixels, 48, 48, &mut out).unwrap();
        for (p, v) in pixels.iter().zip(out.iter()) {
            assert!((INPUT.normalise(*p as f32) - v).abs() < 1e-4, "{p} -> {v}");
        }
    }

    #[test]
    fn normalises_to_symmetric_range() {
        let mut out = [0.0f32; 48 * 48];
        preprocess(&INPUT, &[0u8; 4], 2, 2, &mut out).unwrap();
        assert!(out.iter().all(|v| (*v + 1.0).abs() < 1e-5));
        preprocess(&INPUT, &[255u8; 9], 3, 3, &mut out).unwrap();
        assert!(out.iter().all(|v| (*v - 1.0).abs() < 1e-5));
    }

    #[test]
    fn downscale_averages_instead_of_aliasing() {
        // A 1-pixel checkerboard at 96x96 must come out mid-gray at 48x48, not black or white.
        let pixels: [u8; 96 * 96] = core::array::from_fn(|i| if (i / 96 + i % 96) % 2 == 0 { 0 } else { 255 });
        let mut out = [0.0f32; 48 * 48];
        preprocess(&INPUT, &pixels, 96, 96, &mut out).unwrap();
        assert!(
            out.iter().all(|v| v.abs() < 0.1),
            "max {:?}",
            out.iter().cloned().fold(0.0f32, f32::max)
        );
    }

    #[test]
    fn upscale_preserves_left_right_structure() {
        // Left half dark, right half bright, 4x2 → 48x48.
        let pixels = [0u8, 0, 255, 255, 0, 0, 255, 255];
        let mut out = [0.0f32; 48 * 48];
        preprocess(&INPUT, &pixels, 4, 2, &mut out).unwrap();
        assert!(out[0] < -0.99 && out[47] > 0.99);
        assert!(out[48 * 47] < -0.99 && out[48 * 48 - 1] > 0.99);
    }

    #[test]
    fn the_separable_filter_equals_the_direct_one() {
        // Shrinks (the camera crops: up to 192 px), enlargements, and shrinks too large for the
        // stack windows (direct on both sides).
        let mut out = [0.0f32; 48 * 48];
        for (width, height) in [(192, 192), (161, 97), (60, 48), (48, 48), (7, 30), (1, 1), (3100, 50)] {
            let pixels: std::vec::Vec<u8> = (0..width * height).map(|i| (i * 37 % 251) as u8).collect();
            preprocess(&INPUT, &pixels, width, height, &mut out).unwrap();
            let (x_axis, y_axis) = (Axis::new(width, 48), Axis::new(height, 48));
            for (i, v) in out.iter().enumerate() {
                let direct = INPUT.normalise(direct(&x_axis, &y_axis, i % 48, i / 48, &pixels, width));
                assert_eq!(
                    v.to_bits(),
                    direct.to_bits(),
                    "{width}x{height} at {i}: {v} vs {direct}"
                );
            }
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        let mut out = [0.0f32; 48 * 48];
        assert_eq!(
            preprocess(&INPUT, &[], 0, 5, &mut out),
            Err(PreprocessError::EmptyImage)
        );
        assert_eq!(
            preprocess(&INPUT, &[0; 5], 2, 2, &mut out),
            Err(PreprocessError::PixelCount { expected: 4, got: 5 })
        );
        assert_eq!(
            preprocess(&INPUT, &[0; 4], 2, 2, &mut out[..10]),
            Err(PreprocessError::OutputLen {
                expected: 2304,
                got: 10
            })
        );
    }
}
