//! Editing ONNX graphs through tract's protobuf types: tensors, metadata, renames, BatchNorm folding.

use std::collections::HashMap;

use anyhow::{Context, Result, bail, ensure};
use prost::Message;
use sha2::{Digest, Sha256};
use tract_onnx::pb::{
    AttributeProto, GraphProto, ModelProto, NodeProto, StringStringEntryProto, TensorProto, tensor_proto::DataType,
};

/// Parses a serialized ONNX model.
pub fn decode(bytes: &[u8]) -> Result<ModelProto> {
    ModelProto::decode(bytes).context("not an ONNX model (protobuf decoding failed)")
}

/// Serializes an ONNX model.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// The graph of a model (exported models always have one).
pub fn graph(model: &ModelProto) -> Result<&GraphProto> {
    model.graph.as_ref().context("ONNX model has no graph")
}

/// The graph of a model, mutably.
pub fn graph_mut(model: &mut ModelProto) -> Result<&mut GraphProto> {
    model.graph.as_mut().context("ONNX model has no graph")
}

/// A named tensor from its little-endian payload.
fn tensor(name: &str, dims: &[usize], data_type: DataType, raw_data: Vec<u8>) -> TensorProto {
    TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: data_type as i32,
        raw_data,
        ..Default::default()
    }
}

/// A named f32 tensor.
pub fn f32_tensor(name: &str, dims: &[usize], values: &[f32]) -> TensorProto {
    tensor(
        name,
        dims,
        DataType::Float,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

/// A named i8 tensor.
pub fn i8_tensor(name: &str, dims: &[usize], values: &[i8]) -> TensorProto {
    tensor(name, dims, DataType::Int8, values.iter().map(|&v| v as u8).collect())
}

/// A named i32 tensor.
pub fn i32_tensor(name: &str, dims: &[usize], values: &[i32]) -> TensorProto {
    tensor(
        name,
        dims,
        DataType::Int32,
        values.iter().flat_map(|v| v.to_le_bytes()).collect(),
    )
}

/// The values of an f32 tensor, whether stored raw or in `float_data`.
pub fn f32_values(tensor: &TensorProto) -> Result<Vec<f32>> {
    ensure!(
        tensor.data_type == DataType::Float as i32,
        "tensor `{}` is not f32 (data type {})",
        tensor.name,
        tensor.data_type
    );
    if !tensor.float_data.is_empty() {
        return Ok(tensor.float_data.clone());
    }
    ensure!(
        tensor.raw_data.len().is_multiple_of(4),
        "tensor `{}` has a truncated payload",
        tensor.name
    );
    Ok(tensor
        .raw_data
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// Dimensions of a tensor as `usize`.
pub fn dims(tensor: &TensorProto) -> Vec<usize> {
    tensor.dims.iter().map(|&d| d as usize).collect()
}

/// An integer attribute.
pub fn int_attribute(name: &str, value: i64) -> AttributeProto {
    AttributeProto {
        name: name.to_string(),
        r#type: tract_onnx::pb::attribute_proto::AttributeType::Int as i32,
        i: value,
        ..Default::default()
    }
}

/// A node with no attributes.
pub fn node(op_type: &str, name: &str, inputs: &[&str], outputs: &[&str]) -> NodeProto {
    NodeProto {
        op_type: op_type.to_string(),
        name: name.to_string(),
        input: inputs.iter().map(std::string::ToString::to_string).collect(),
        output: outputs.iter().map(std::string::ToString::to_string).collect(),
        ..Default::default()
    }
}

/// The initializer called `name`, if any.
pub fn initializer<'g>(graph: &'g GraphProto, name: &str) -> Option<&'g TensorProto> {
    graph.initializer.iter().find(|t| t.name == name)
}

/// For each tensor name, the indices of the nodes reading it.
pub fn consumers(graph: &GraphProto) -> HashMap<String, Vec<usize>> {
    let mut map: HashMap<String, Vec<usize>> = HashMap::new();
    for (index, node) in graph.node.iter().enumerate() {
        for input in &node.input {
            map.entry(input.clone()).or_default().push(index);
        }
    }
    map
}

/// Whether `name` is one of the graph's outputs.
pub fn is_graph_output(graph: &GraphProto, name: &str) -> bool {
    graph.output.iter().any(|o| o.name == name)
}

/// Renames the graph's inputs and outputs (everywhere they appear) to `input` and `outputs`.
pub fn name_boundaries(graph: &mut GraphProto, input: &str, outputs: &[&str]) -> Result<()> {
    ensure!(
        graph.input.len() == 1,
        "expected one graph input, found {}",
        graph.input.len()
    );
    ensure!(
        graph.output.len() == outputs.len(),
        "expected {} graph outputs, found {}",
        outputs.len(),
        graph.output.len()
    );
    let mut renames: Vec<(String, String)> = vec![(graph.input[0].name.clone(), input.to_string())];
    renames.extend(
        graph
            .output
            .iter()
            .zip(outputs)
            .map(|(o, n)| (o.name.clone(), n.to_string())),
    );
    for (old, new) in &renames {
        rename_tensor(graph, old, new);
    }
    Ok(())
}

/// Renames a tensor wherever it is produced, consumed or declared.
pub fn rename_tensor(graph: &mut GraphProto, old: &str, new: &str) {
    for node in &mut graph.node {
        for name in node.input.iter_mut().chain(node.output.iter_mut()) {
            if name == old {
                *name = new.to_string();
            }
        }
    }
    for info in graph
        .input
        .iter_mut()
        .chain(graph.output.iter_mut())
        .chain(graph.value_info.iter_mut())
    {
        if info.name == old {
            info.name = new.to_string();
        }
    }
    for tensor in &mut graph.initializer {
        if tensor.name == old {
            tensor.name = new.to_string();
        }
    }
}

/// Sets (or replaces) metadata properties.
pub fn set_metadata<'a>(model: &mut ModelProto, props: impl IntoIterator<Item = (&'a str, String)>) {
    for (key, value) in props {
        model.metadata_props.retain(|p| p.key != key);
        model.metadata_props.push(StringStringEntryProto {
            key: key.to_string(),
            value,
        });
    }
}

/// The metadata properties as a sorted map.
pub fn metadata(model: &ModelProto) -> std::collections::BTreeMap<String, String> {
    model
        .metadata_props
        .iter()
        .map(|p| (p.key.clone(), p.value.clone()))
        .collect()
}

/// SHA-256 (hex) over the f32 initializers, in graph order (name, dims, values).
pub fn weights_sha256(graph: &GraphProto) -> Result<String> {
    let mut hasher = Sha256::new();
    for tensor in graph
        .initializer
        .iter()
        .filter(|t| t.data_type == DataType::Float as i32)
    {
        hasher.update(tensor.name.as_bytes());
        for d in &tensor.dims {
            hasher.update(d.to_le_bytes());
        }
        for v in f32_values(tensor)? {
            hasher.update(v.to_le_bytes());
        }
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Folds every `BatchNormalization` that is the only reader of a `Conv` output into that conv's
/// weights and bias: `w' = w·γ/√(σ²+ε)`, `b' = (b−μ)·γ/√(σ²+ε)+β`. Returns how many were folded.
///
/// One conv instead of conv + normalisation is both faster and what int8 quantization needs: the
/// quantized conv must produce the normalised values directly.
pub fn fold_batch_norm(graph: &mut GraphProto) -> Result<usize> {
    let mut folded = 0;
    loop {
        let readers = consumers(graph);
        let Some((conv_index, norm_index)) = graph.node.iter().enumerate().find_map(|(i, n)| {
            if n.op_type != "Conv" || is_graph_output(graph, &n.output[0]) {
                return None;
            }
            match readers.get(&n.output[0]).map(Vec::as_slice) {
                Some(&[j]) if graph.node[j].op_type == "BatchNormalization" => Some((i, j)),
                _ => None,
            }
        }) else {
            return Ok(folded);
        };
        fold_pair(graph, conv_index, norm_index)?;
        folded += 1;
    }
}

fn fold_pair(graph: &mut GraphProto, conv_index: usize, norm_index: usize) -> Result<()> {
    let conv = graph.node[conv_index].clone();
    let norm = graph.node[norm_index].clone();
    let epsilon = norm
        .attribute
        .iter()
        .find(|a| a.name == "epsilon")
        .map_or(1e-5, |a| a.f);
    let param = |i: usize| -> Result<Vec<f32>> {
        let name = norm.input.get(i).context("BatchNormalization lacks an input")?;
        f32_values(initializer(graph, name).with_context(|| format!("BatchNorm input `{name}` is not constant"))?)
    };
    let (gamma, beta, mean, var) = (param(1)?, param(2)?, param(3)?, param(4)?);
    let weight = initializer(graph, &conv.input[1]).context("conv weight is not constant")?;
    let weight_dims = dims(weight);
    let mut w = f32_values(weight)?;
    let out_channels = weight_dims[0];
    if gamma.len() != out_channels {
        bail!(
            "BatchNorm over {} channels after a conv with {out_channels}",
            gamma.len()
        );
    }
    let mut bias = match conv.input.get(2).filter(|s| !s.is_empty()) {
        Some(name) => f32_values(initializer(graph, name).context("conv bias is not constant")?)?,
        None => vec![0.0; out_channels],
    };
    let per_channel = w.len() / out_channels;
    for c in 0..out_channels {
        let scale = gamma[c] / (var[c] + epsilon).sqrt();
        w[c * per_channel..(c + 1) * per_channel]
            .iter_mut()
            .for_each(|v| *v *= scale);
        bias[c] = (bias[c] - mean[c]) * scale + beta[c];
    }
    let w_name = format!("{}.folded_weight", conv.output[0]);
    let b_name = format!("{}.folded_bias", conv.output[0]);
    graph.initializer.push(f32_tensor(&w_name, &weight_dims, &w));
    graph.initializer.push(f32_tensor(&b_name, &[out_channels], &bias));
    let conv_node = &mut graph.node[conv_index];
    conv_node.input.truncate(1);
    conv_node.input.extend([w_name, b_name]);
    conv_node.output[0] = norm.output[0].clone();
    graph.node.remove(norm_index);
    remove_unused_initializers(graph);
    Ok(())
}

/// Drops initializers no node reads any more.
pub fn remove_unused_initializers(graph: &mut GraphProto) {
    let used: std::collections::HashSet<String> = graph.node.iter().flat_map(|n| n.input.iter().cloned()).collect();
    graph.initializer.retain(|t| used.contains(&t.name));
}

/// The model's optimized plan in tract, through the runtime the device uses.
pub fn plan(model: &ModelProto) -> anyhow::Result<fer_runtime::Plan> {
    fer_runtime::Plan::from_bytes(&encode(model))
}
