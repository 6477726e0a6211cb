//! The selective attention module: pixel-wise and element-wise coefficients from the deepest
//! feature map, combined and applied with a residual path.
//!
//! From F (`[B, C, H, W]`):
//! - pixel-wise: `a = sigmoid(conv1x1(relu(conv1x1(F))))`, `[B, 1, H, W]` — *where* to look;
//! - element-wise: `e = sigmoid(W2 relu(W1 gap(F)))`, `[B, C]` — *which* features matter;
//! - `A = a ⊗ e` (`[B, C, H, W]`) and the output `F + F ⊙ A`.
//!
//! The residual form keeps F's signal when the coefficients are small (at initialisation they sit
//! near 0.5 everywhere), so the module can only re-weight, never erase, what the backbone found;
//! plain `F ⊙ A` halves every activation at the start and trains slower. Pooling is written as
//! `sum_dim / n` because Burn's ONNX exporter rejects `mean_dim`.

use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{relu, sigmoid};

/// Selective attention over a `channels`-deep feature map.
#[derive(Module, Debug)]
pub struct SelectiveAttention {
    pixel_hidden: Conv2d,
    pixel_out: Conv2d,
    element_hidden: Linear,
    element_out: Linear,
}

impl SelectiveAttention {
    /// A module for `channels` feature channels, with a bottleneck of `channels / reduction`.
    pub fn new(channels: usize, reduction: usize, device: &Device) -> Self {
        let hidden = (channels / reduction).max(1);
        Self {
            pixel_hidden: Conv2dConfig::new([channels, hidden], [1, 1]).init(device),
            pixel_out: Conv2dConfig::new([hidden, 1], [1, 1]).init(device),
            element_hidden: LinearConfig::new(channels, hidden).init(device),
            element_out: LinearConfig::new(hidden, channels).init(device),
        }
    }

    /// The combined coefficients `A = a ⊗ e`, `[B, C, H, W]`, each in (0, 1).
    pub fn coefficients(&self, features: Tensor<4>) -> Tensor<4> {
        let [b, c, _, _] = features.dims();
        let pixel = sigmoid(
            self.pixel_out
                .forward(relu(self.pixel_hidden.forward(features.clone()))),
        );
        let element = sigmoid(
            self.element_out
                .forward(relu(self.element_hidden.forward(global_average_pool(features)))),
        );
        // Broadcasting `[B, 1, H, W] ⊙ [B, C, 1, 1]` instead of `expand`, which the exporter lacks.
        pixel * element.reshape([b, c, 1, 1])
    }

    /// `F + F ⊙ A`.
    pub fn forward(&self, features: Tensor<4>) -> Tensor<4> {
        let attention = self.coefficients(features.clone());
        features.clone() + features * attention
    }
}

/// Mean over the spatial dimensions, `[B, C, H, W] → [B, C]`, in an export-friendly form.
pub fn global_average_pool(features: Tensor<4>) -> Tensor<2> {
    let [b, c, h, w] = features.dims();
    features.reshape([b, c, h * w]).sum_dim(2).reshape([b, c]) / (h * w) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_range() {
        let device = Device::flex();
        let attention = SelectiveAttention::new(16, 4, &device);
        let features = Tensor::<4>::random([2, 16, 6, 6], burn::tensor::Distribution::Normal(0.0, 1.0), &device);
        let a = attention.coefficients(features.clone());
        assert_eq!(a.dims(), [2, 16, 6, 6]);
        let values = a.into_data().try_to_vec::<f32>().unwrap();
        assert!(values.iter().all(|v| *v > 0.0 && *v < 1.0));
        assert_eq!(attention.forward(features).dims(), [2, 16, 6, 6]);
    }

    #[test]
    fn pooling_is_the_spatial_mean() {
        let device = Device::flex();
        let x = Tensor::<4>::from_floats([[[[1.0, 2.0], [3.0, 6.0]]]], &device);
        let pooled = global_average_pool(x).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(pooled, [3.0]);
    }
}
