//! Host-side training of the facial-expression classifier.
//!
//! Data flows one way: [`dataset`] loads labelled crops, [`augment`] and [`batch`] turn them into
//! model inputs through `fer_protocol`'s preprocessing, [`model`] (with [`attention`]) maps them
//! to embeddings and logits, [`loss`] scores them, [`training`] runs the loop and writes a run
//! folder, [`metrics`] and [`report`] say how good the result is, and [`embedding`] and [`compare`] show
//! what the loss does and which configuration wins.

pub mod attention;
pub mod augment;
pub mod batch;
pub mod bench;
pub mod compare;
pub mod dataset;
pub mod embedding;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod report;
mod separable;
pub mod training;
