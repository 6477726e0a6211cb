//! The model's input contract: what tensor a face becomes.

/// Shape and normalisation of the classifier input (`[N, channels, height, width]`, f32).
///
/// A pixel `p` (0..=255) becomes `(p / 255 - mean) / std`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InputSpec {
    /// Input width in pixels.
    pub width: usize,
    /// Input height in pixels.
    pub height: usize,
    /// Number of channels (1: grayscale).
    pub channels: usize,
    /// Mean subtracted after scaling to 0..=1.
    pub mean: f32,
    /// Divisor applied after subtracting the mean.
    pub std: f32,
}

impl InputSpec {
    /// Number of f32 values in one input (`channels * height * width`).
    pub const fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Whether the input holds no values (never true for [`INPUT`]).
    pub const fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Mirrors an input left-right in place (every row of every channel reversed): the face as
    /// a camera on its other side would see it, for test-time flip averaging.
    pub fn mirror(&self, input: &mut [f32]) {
        for row in input.chunks_exact_mut(self.width) {
            row.reverse();
        }
    }

    /// The model input value of an 8-bit pixel.
    #[inline]
    pub fn normalise(&self, pixel: f32) -> f32 {
        (pixel / 255.0 - self.mean) / self.std
    }
}

/// The classifier input every stage uses.
///
/// 48x48 grayscale: FER2013/FER+ faces are 48x48, so a larger input would only upsample them
/// (no new information, 1.8x the multiply-adds at 64x64); RAF-DB's 100x100 crops are
/// downsampled to it. The range is `[-1, 1]`, symmetric around zero, which suits both training
/// and the symmetric int8 quantization of the input.
pub const INPUT: InputSpec = InputSpec {
    width: 48,
    height: 48,
    channels: 1,
    mean: 0.5,
    std: 0.5,
};
