//! Burn checkpoint → f32 ONNX: Burn's exporter, then the contract's names and folded BatchNorms.

use anyhow::{Result, anyhow};
use burn::module::{Module, Param};
use burn::prelude::*;
use burn_onnx::export::OnnxExporter;
use fer_protocol::INPUT;
use fer_protocol::contract::{INPUT_NAME, OUTPUTS};
use fer_train::model::{ExpressionNet, squared_distances_to_columns};
use tract_onnx::pb::ModelProto;

use crate::graph;

/// The network as exported: the centers are stored transposed (`[D, 7]`) so the distance is a
/// MatMul against a constant; Burn's exporter has no Transpose.
#[derive(Module, Debug)]
struct Deployed {
    net: ExpressionNet,
    centers_t: Param<Tensor<2>>,
}

impl Deployed {
    fn new(net: &ExpressionNet) -> Self {
        Self {
            centers_t: Param::from_tensor(net.centers.val().transpose()),
            net: net.valid(),
        }
    }
}

/// What the exported graph computes: logits, embedding and distances to the centers.
fn inference(model: &Deployed, input: Tensor<4>) -> (Tensor<2>, Tensor<2>, Tensor<2>) {
    let out = model.net.forward(input);
    let distances = squared_distances_to_columns(out.embedding.clone(), model.centers_t.val());
    (out.logits, out.embedding, distances)
}

/// Exports the network in inference mode to an f32 ONNX graph for one face (`[1, 1, 48, 48]`),
/// with the contract's input and output names and every BatchNorm folded into its conv.
///
/// The batch axis is fixed at 1: the device classifies one face crop at a time, and Burn 0.22's
/// exporter cannot keep a dynamic batch through the attention's reshapes ("dynamic shape was
/// lost ... multiple element-count-derived dimensions remain").
pub fn export(model: &ExpressionNet, device: &Device) -> Result<ModelProto> {
    let model = Deployed::new(model);
    let sample = Tensor::<4>::zeros([1, INPUT.channels, INPUT.height, INPUT.width], device);
    let onnx = OnnxExporter::new()
        .export(&model, sample, inference)
        .map_err(|e| anyhow!("Burn's ONNX exporter failed: {e}"))?;
    let mut proto = graph::decode(onnx.as_bytes())?;
    let g = graph::graph_mut(&mut proto)?;
    graph::name_boundaries(g, INPUT_NAME, &OUTPUTS)?;
    let folded = graph::fold_batch_norm(g)?;
    tracing::info!(folded, "exported f32 graph ({} nodes)", g.node.len());
    Ok(proto)
}

/// Forward pass in Burn (inference mode) of preprocessed inputs `[n, 1, 48, 48]`: the reference
/// the ONNX models are checked against. Returns logits, embedding and center distances, row-major.
pub fn burn_outputs(model: &ExpressionNet, inputs: &[f32], device: &Device) -> [Vec<f32>; 3] {
    let n = inputs.len() / INPUT.len();
    let x = Tensor::<4>::from_data(
        TensorData::new(inputs.to_vec(), [n, INPUT.channels, INPUT.height, INPUT.width]),
        device,
    );
    let model = model.valid();
    let out = model.forward(x);
    let distances = model.center_distances(out.embedding.clone());
    let (logits, embedding) = (out.logits, out.embedding);
    [logits, embedding, distances].map(|t| t.into_data().convert::<f32>().try_to_vec::<f32>().expect("f32 tensor"))
}
