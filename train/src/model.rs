//! The expression network: compact CNN backbone → selective attention → embedding → classifier,
//! plus the learnable triplet-center loss centers that live in the embedding space.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use fer_protocol::{Expression, INPUT};

use crate::attention::{SelectiveAttention, global_average_pool};

/// Shape of the network. Saved next to every checkpoint so it can be rebuilt.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NetworkConfig {
    /// Channels of the four stages; each stage is two 3x3 conv-BN-ReLU blocks, stages 1-3 end in
    /// a 2x2 max-pool (48 → 24 → 12 → 6).
    pub widths: [usize; 4],
    /// Embedding dimension (where the triplet-center loss acts).
    pub embedding_dim: usize,
    /// Whether the selective attention module is used.
    pub attention: bool,
    /// Bottleneck reduction of the attention heads.
    pub attention_reduction: usize,
    /// Dropout before the classifier.
    pub dropout: f64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            widths: [16, 32, 96, 192],
            embedding_dim: 128,
            attention: true,
            attention_reduction: 8,
            dropout: 0.3,
        }
    }
}

impl NetworkConfig {
    /// A tiny network for tests and smoke runs.
    pub fn tiny() -> Self {
        Self {
            widths: [4, 8, 8, 16],
            embedding_dim: 8,
            attention: true,
            attention_reduction: 4,
            dropout: 0.0,
        }
    }

    /// Multiply-adds of one forward pass on one face (convs and linear layers; BN, ReLU, pooling
    /// and the attention's element-wise products are a rounding error and not counted).
    pub fn multiply_adds(&self) -> usize {
        let mut macs = 0;
        let mut side = INPUT.width;
        let mut channels = INPUT.channels;
        for (stage, &width) in self.widths.iter().enumerate() {
            macs += side * side * 9 * channels * width + side * side * 9 * width * width;
            channels = width;
            if stage < 3 {
                side /= 2;
            }
        }
        if self.attention {
            let hidden = (channels / self.attention_reduction).max(1);
            macs += side * side * (channels * hidden + hidden) + 2 * channels * hidden;
        }
        macs + channels * self.embedding_dim
            + self.embedding_dim * Expression::COUNT
            + Expression::COUNT * self.embedding_dim
    }
}

/// conv3x3 → BatchNorm → ReLU.
#[derive(Module, Debug)]
struct ConvBlock {
    conv: Conv2d,
    norm: BatchNorm,
}

impl ConvBlock {
    fn new(input: usize, output: usize, device: &Device) -> Self {
        Self {
            // No bias: the BatchNorm's shift does that job (and folds into the conv at export).
            conv: Conv2dConfig::new([input, output], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_bias(false)
                .init(device),
            norm: BatchNormConfig::new(output).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        relu(self.norm.forward(self.conv.forward(x)))
    }
}

/// What one forward pass gives.
pub struct Output {
    /// Class scores, `[B, 7]`, in [`Expression`] order.
    pub logits: Tensor<2>,
    /// The embedding, `[B, D]`.
    pub embedding: Tensor<2>,
}

/// The expression classifier with its triplet-center loss centers.
#[derive(Module, Debug)]
pub struct ExpressionNet {
    blocks: Vec<ConvBlock>,
    pool: MaxPool2d,
    attention: Option<SelectiveAttention>,
    embed: Linear,
    dropout: Dropout,
    classifier: Linear,
    /// One learnable center per class in the embedding space, `[7, D]`.
    pub centers: Param<Tensor<2>>,
}

impl ExpressionNet {
    /// A freshly initialised network (seed the device first for a reproducible start).
    pub fn new(config: &NetworkConfig, device: &Device) -> Self {
        let mut blocks = Vec::new();
        let mut channels = INPUT.channels;
        for &width in &config.widths {
            blocks.push(ConvBlock::new(channels, width, device));
            blocks.push(ConvBlock::new(width, width, device));
            channels = width;
        }
        let centers = Tensor::random(
            [Expression::COUNT, config.embedding_dim],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            device,
        );
        Self {
            blocks,
            pool: MaxPool2dConfig::new([2, 2]).init(),
            attention: config
                .attention
                .then(|| SelectiveAttention::new(channels, config.attention_reduction, device)),
            embed: LinearConfig::new(channels, config.embedding_dim).init(device),
            dropout: DropoutConfig::new(config.dropout).init(),
            classifier: LinearConfig::new(config.embedding_dim, Expression::COUNT).init(device),
            centers: Param::from_tensor(centers),
        }
    }

    /// The deepest feature map F, `[B, C, 6, 6]`.
    pub fn features(&self, input: Tensor<4>) -> Tensor<4> {
        let mut x = input;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(x);
            // Pool after the second block of stages 1-3.
            if i % 2 == 1 && i < self.blocks.len() - 1 {
                x = self.pool.forward(x);
            }
        }
        x
    }

    /// Logits and embedding of a batch of preprocessed faces, `[B, 1, 48, 48]`.
    pub fn forward(&self, input: Tensor<4>) -> Output {
        let mut features = self.features(input);
        if let Some(attention) = &self.attention {
            features = attention.forward(features);
        }
        let embedding = self.embed.forward(global_average_pool(features));
        let logits = self.classifier.forward(self.dropout.forward(embedding.clone()));
        Output { logits, embedding }
    }

    /// Squared Euclidean distance of each embedding to each class center, `[B, 7]`.
    pub fn center_distances(&self, embedding: Tensor<2>) -> Tensor<2> {
        squared_distances(embedding, self.centers.val())
    }
}

/// Pairwise squared Euclidean distances between the rows of `a` (`[N, D]`) and `b` (`[M, D]`).
pub fn squared_distances(a: Tensor<2>, b: Tensor<2>) -> Tensor<2> {
    squared_distances_to_columns(a, b.transpose())
}

/// Squared Euclidean distances between the rows of `a` (`[N, D]`) and the columns of `b_t`
/// (`[D, M]`).
///
/// Written as `|a|² + |b|² − 2ab` (MatMul, ReduceSum, broadcast Add) so it exports to ONNX and runs
/// well in tract; clamped at 0 against rounding (with `relu`: the exporter has no clamp). Taking `b` transposed lets the exporter see a
/// plain MatMul against a constant (it has no Transpose).
pub fn squared_distances_to_columns(a: Tensor<2>, b_t: Tensor<2>) -> Tensor<2> {
    // `[N, 1] + [1, M]` broadcasts; Burn's ONNX exporter has no `expand`.
    let a_norm = a.clone().square().sum_dim(1);
    let b_norm = b_t.clone().square().sum_dim(0);
    relu(a_norm + b_norm - a.matmul(b_t) * 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_with_and_without_attention() {
        let device = Device::flex();
        for attention in [true, false] {
            let config = NetworkConfig {
                attention,
                ..NetworkConfig::tiny()
            };
            let net = ExpressionNet::new(&config, &device);
            let out = net.forward(Tensor::zeros([3, 1, 48, 48], &device));
            assert_eq!(out.logits.dims(), [3, 7]);
            assert_eq!(out.embedding.dims(), [3, 8]);
            assert_eq!(net.center_distances(out.embedding).dims(), [3, 7]);
        }
    }

    #[test]
    fn default_network_fits_the_budget() {
        let config = NetworkConfig::default();
        let params = ExpressionNet::new(&config, &Device::flex()).num_params();
        assert!(params <= 1_500_000, "{params} parameters");
        assert!(config.multiply_adds() <= 60_000_000, "{} MACs", config.multiply_adds());
    }

    #[test]
    fn squared_distances_by_hand() {
        let device = Device::flex();
        let a = Tensor::<2>::from_floats([[0.0, 0.0], [1.0, 2.0]], &device);
        let b = Tensor::<2>::from_floats([[3.0, 4.0], [1.0, 0.0]], &device);
        let d = squared_distances(a, b).into_data().try_to_vec::<f32>().unwrap();
        assert_eq!(d, [25.0, 1.0, 8.0, 4.0]);
    }
}
