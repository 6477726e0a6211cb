//! Host-side training of the facial-expression classifier.
//!
//! Data flows one way: [`dataset`] loads labelled crops, [`augment`] and [`batch`] turn them into
//! model inputs through `fer_protocol`'s preprocessing, [`model`] (with [`attention`]) maps them
//! to embeddings and logits (while training, through the fused kernels of `kernels`), [`loss`]
//! scores them, [`training`] runs the loop that a [`config`] defines (keeping an [`ema`] of the
//! weights when asked, and learning from [`distill`]ed teachers of ours when given) into a [`run`] folder, the one owner of its files; [`metrics`] and [`report`] say
//! how good the result is, and [`embedding`], [`predictions`] and [`compare`] show what the loss
//! does and which configuration wins.

pub mod attention;
pub mod augment;
pub mod batch;
pub mod bench;
pub mod compare;
pub mod config;
pub mod dataset;
pub mod distill;
pub mod ema;
pub mod embedding;
mod kernels;
pub mod loss;
pub mod metrics;
pub mod model;
pub mod predictions;
pub mod report;
pub mod run;
pub mod training;

/// Skips a test whose input (the shared data set, a system font) is absent, with the reason on
/// stderr; in CI (`CI=true`), where that input is provisioned, a skip would hide a failure, so
/// it panics instead.
#[doc(hidden)]
pub fn skip_test_unless_ci(why: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true, yet {why}: CI provides it, so this test must run"
    );
    eprintln!("skipped: {why}");
}
