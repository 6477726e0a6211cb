//! The expression network: compact CNN backbone → selective attention → embedding → classifier,
//! plus the learnable triplet-center loss centers that live in the embedding space.
//!
//! Two backbones share one layout (four stages of blocks, 2x2 max-pool after stages 1-3,
//! 48 → 24 → 12 → 6): `plain` blocks are 3x3 conv-BN-ReLU (the v1 network); `separable` blocks
//! are a 3x3 depthwise conv then a 1x1 pointwise conv-BN-ReLU (MobileNet/Xception style), except
//! the first, which stays a plain conv because a depthwise conv over one input channel is
//! pointless. The pointwise conv is followed directly by BatchNorm so the export folds it away.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, Dropout, DropoutConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use fer_protocol::{Expression, INPUT};

use crate::attention::{SelectiveAttention, global_average_pool};
use crate::kernels::{batch_norm_relu, depthwise, max_pool2x2, pointwise, stem_conv};

/// The kind of conv block the backbone is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backbone {
    /// 3x3 conv-BN-ReLU blocks (the v1 network).
    Plain,
    /// 3x3 depthwise + 1x1 pointwise conv-BN-ReLU blocks after a plain 3x3 stem (v2).
    Separable,
}

impl Backbone {
    /// What run folders written before backbones were selectable hold.
    fn v1() -> Self {
        Backbone::Plain
    }
}

/// Shape of the network. Saved next to every checkpoint so it can be rebuilt.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NetworkConfig {
    /// The conv block type.
    #[serde(default = "Backbone::v1")]
    pub backbone: Backbone,
    /// Channels of the four stages; stages 1-3 end in a 2x2 max-pool (48 → 24 → 12 → 6).
    pub widths: [usize; 4],
    /// Blocks per stage.
    #[serde(default = "two_blocks_per_stage")]
    pub depths: [usize; 4],
    /// Embedding dimension (where the triplet-center loss acts).
    pub embedding_dim: usize,
    /// Whether the selective attention module is used.
    pub attention: bool,
    /// Bottleneck reduction of the attention heads.
    pub attention_reduction: usize,
    /// Dropout before the classifier.
    pub dropout: f64,
}

/// What run folders written before depths were selectable hold.
fn two_blocks_per_stage() -> [usize; 4] {
    [2; 4]
}

/// One conv block of the backbone, as [`NetworkConfig::blocks`] lays it out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// Input channels.
    pub input: usize,
    /// Output channels.
    pub output: usize,
    /// Depthwise-separable (else a plain 3x3 conv).
    pub separable: bool,
    /// Side of its (square) input and output maps.
    pub side: usize,
    /// Followed by the 2x2 max-pool.
    pub pool: bool,
}

impl Default for NetworkConfig {
    /// The v2 network: a plain 3x3 conv at 48x48, then two separable blocks per stage at
    /// widths 64, 128, 256 (12.5 M multiply-adds, 0.2 M parameters). One block at full
    /// resolution, not two: a separable block there cost a third of a training step (`fer-train
    /// bench --ops`, docs/training-speed.md).
    fn default() -> Self {
        Self {
            backbone: Backbone::Separable,
            widths: [32, 64, 128, 256],
            depths: [1, 2, 2, 2],
            embedding_dim: 128,
            attention: true,
            attention_reduction: 8,
            dropout: 0.3,
        }
    }
}

impl NetworkConfig {
    /// The v1 network: plain blocks at widths 16, 32, 96, 192 (47.7 M multiply-adds).
    pub fn plain() -> Self {
        Self {
            backbone: Backbone::Plain,
            widths: [16, 32, 96, 192],
            depths: [2; 4],
            ..Self::default()
        }
    }

    /// A tiny network for tests and smoke runs.
    pub fn tiny() -> Self {
        Self {
            widths: [4, 8, 8, 16],
            depths: [2; 4],
            embedding_dim: 8,
            attention_reduction: 4,
            dropout: 0.0,
            ..Self::default()
        }
    }

    /// The backbone's blocks in order: the first block of a stage changes the width; the very
    /// first is always a plain conv (a depthwise conv over one input channel is pointless).
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let mut blocks = Vec::new();
        let (mut channels, mut side) = (INPUT.channels, INPUT.width);
        for (stage, (&width, &depth)) in self.widths.iter().zip(&self.depths).enumerate() {
            for i in 0..depth {
                let input = if i == 0 { channels } else { width };
                blocks.push(BlockSpec {
                    input,
                    output: width,
                    separable: self.backbone == Backbone::Separable && input != INPUT.channels,
                    side,
                    pool: stage < 3 && i + 1 == depth,
                });
            }
            channels = width;
            if stage < 3 {
                side /= 2;
            }
        }
        blocks
    }

    /// Multiply-adds of one forward pass on one face (convs and linear layers; BN, ReLU, pooling
    /// and the attention's element-wise products are a rounding error and not counted).
    pub fn multiply_adds(&self) -> usize {
        let mut macs: usize = self
            .blocks()
            .iter()
            .map(|b| {
                let per_pixel = if b.separable {
                    9 * b.input + b.input * b.output
                } else {
                    9 * b.input * b.output
                };
                b.side * b.side * per_pixel
            })
            .sum();
        let (channels, side) = (self.widths[3], INPUT.width / 8);
        if self.attention {
            let hidden = (channels / self.attention_reduction).max(1);
            macs += side * side * (channels * hidden + hidden) + 2 * channels * hidden;
        }
        macs + channels * self.embedding_dim
            + self.embedding_dim * Expression::COUNT
            + Expression::COUNT * self.embedding_dim
    }
}

/// conv3x3 → BatchNorm → ReLU, or depthwise conv3x3 → conv1x1 → BatchNorm → ReLU.
#[derive(Module, Debug)]
pub(crate) struct ConvBlock {
    pub(crate) depthwise: Option<Conv2d>,
    pub(crate) conv: Conv2d,
    pub(crate) norm: BatchNorm,
}

impl ConvBlock {
    fn new(input: usize, output: usize, separable: bool, device: &Device) -> Self {
        let three_by_three = |channels: [usize; 2], groups: usize| {
            Conv2dConfig::new(channels, [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .with_groups(groups)
                .with_bias(false)
                .init(device)
        };
        Self {
            depthwise: separable.then(|| three_by_three([input, input], input)),
            // No bias: the BatchNorm's shift does that job (and folds into the conv at export).
            conv: if separable {
                Conv2dConfig::new([input, output], [1, 1]).with_bias(false).init(device)
            } else {
                three_by_three([input, output], 1)
            },
            norm: BatchNormConfig::new(output).init(device),
        }
    }

    pub(crate) fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = match &self.depthwise {
            Some(dw) => pointwise(&self.conv, depthwise(dw, x)),
            None => stem_conv(&self.conv, x),
        };
        batch_norm_relu(&self.norm, y)
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
    /// Per block: whether the max-pool follows it.
    pooled: Vec<bool>,
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
        let specs = config.blocks();
        let blocks = specs
            .iter()
            .map(|b| ConvBlock::new(b.input, b.output, b.separable, device))
            .collect();
        let channels = config.widths[3];
        let centers = Tensor::random(
            [Expression::COUNT, config.embedding_dim],
            burn::tensor::Distribution::Normal(0.0, 1.0),
            device,
        );
        Self {
            blocks,
            pooled: specs.iter().map(|b| b.pool).collect(),
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
            if self.pools_after(i) {
                x = max_pool2x2(&self.pool, x);
            }
        }
        x
    }

    /// The backbone's blocks, in order (for profiling).
    pub(crate) fn blocks(&self) -> &[ConvBlock] {
        &self.blocks
    }

    /// Whether block `i` is followed by the 2x2 max-pool: the last block of stages 1-3.
    pub(crate) fn pools_after(&self, i: usize) -> bool {
        self.pooled[i]
    }

    /// Everything after the backbone: attention, pooling, embedding, classifier.
    pub(crate) fn head(&self, features: Tensor<4>) -> Output {
        let features = match &self.attention {
            Some(attention) => attention.forward(features),
            None => features,
        };
        let embedding = self.embed.forward(global_average_pool(features));
        let logits = self.classifier.forward(self.dropout.forward(embedding.clone()));
        Output { logits, embedding }
    }

    /// Logits and embedding of a batch of preprocessed faces, `[B, 1, 48, 48]`.
    pub fn forward(&self, input: Tensor<4>) -> Output {
        self.head(self.features(input))
    }

    /// The network with `offset` added to its logits (through the classifier's bias).
    pub fn with_logit_offset(mut self, offset: [f32; Expression::COUNT]) -> Self {
        let bias = self.classifier.bias.take().expect("the classifier has a bias");
        let device = bias.val().device();
        let shifted = bias.val() + Tensor::<1>::from_floats(offset, &device);
        self.classifier.bias = Some(Param::from_tensor(shifted));
        self
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
/// well in tract; clamped at 0 against rounding (with `relu`: the exporter has no clamp). Taking
/// `b` transposed lets the exporter see a
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
    fn shapes_of_both_backbones_with_and_without_attention() {
        let device = Device::flex();
        for (backbone, attention) in [
            (Backbone::Separable, true),
            (Backbone::Separable, false),
            (Backbone::Plain, true),
            (Backbone::Plain, false),
        ] {
            let config = NetworkConfig {
                backbone,
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
        // Model v2's budget: at most 20 M multiply-adds and 0.5 M parameters per face.
        let config = NetworkConfig::default();
        let params = ExpressionNet::new(&config, &Device::flex()).num_params();
        assert!(params <= 500_000, "{params} parameters");
        assert!(config.multiply_adds() <= 20_000_000, "{} MACs", config.multiply_adds());
        let plain = NetworkConfig::plain();
        assert!(plain.multiply_adds() > 40_000_000, "the v1 network is the larger one");
    }

    #[test]
    fn separable_blocks_count_their_multiply_adds() {
        // Widths 4, 8, 8, 16 without attention; per stage, side² × (first block + second block):
        // 48²·(9·1·4 + 9·4 + 4·4) + 24²·((9·4 + 4·8) + (9·8 + 8·8))
        //   + 12²·((9·8 + 8·8) + (9·8 + 8·8)) + 6²·((9·8 + 8·16) + (9·16 + 16·16)),
        // then embedding 16·8, classifier 8·7 and the centers' 7·8.
        let config = NetworkConfig {
            attention: false,
            ..NetworkConfig::tiny()
        };
        let convs = 2304 * (36 + 36 + 16) + 576 * (68 + 136) + 144 * (136 + 136) + 36 * (200 + 400);
        assert_eq!(config.multiply_adds(), convs + 16 * 8 + 8 * 7 + 7 * 8);
        // The depthwise convs have 9 weights per channel, the pointwise ones cin·cout.
        let params = ExpressionNet::new(&config, &Device::flex()).num_params();
        let conv_weights = 36 + (36 + 16) + (36 + 32) + (72 + 64) + (72 + 64) + (72 + 64) + (72 + 128) + (144 + 256);
        let norms = 4 * (4 + 4 + 8 + 8 + 8 + 8 + 16 + 16);
        let heads = (16 * 8 + 8) + (8 * 7 + 7) + 7 * 8;
        assert_eq!(params, conv_weights + norms + heads);
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
