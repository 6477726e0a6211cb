//! Shared truths of the facial-expression sensor.
//!
//! Everything that training, export and the device must agree on lives here, once: the seven
//! expression labels and their order, the model's input contract, the preprocessing that turns
//! an 8-bit grayscale face crop into the model input, how a row of class scores is read
//! ([`scores`]: argmax, softmax) and the serial wire frames ([`wire`]). The crate is `no_std` and
//! allocation-free so the same code runs in the trainer, on a Raspberry Pi and on a
//! microcontroller receiver.
//!
//! The `std` feature adds the host-side pieces that need an allocator: the model contract carried in
//! ONNX metadata ([`contract`]) and the golden-vector file format ([`golden`]). The `defmt`
//! feature derives `defmt::Format` for the wire types, for a microcontroller receiver.
#![no_std]

#[cfg(feature = "std")]
extern crate alloc;
// Float maths (`exp` in `scores::softmax`) comes from std; core has none on stable.
#[cfg(feature = "std")]
extern crate std;

#[cfg(feature = "std")]
pub mod contract;
#[cfg(feature = "std")]
pub mod golden;
pub mod input;
pub mod label;
pub mod preprocess;
pub mod scores;
pub mod wire;

pub use input::{INPUT, InputSpec};
pub use label::{Expression, UnknownLabel};
pub use preprocess::{PreprocessError, preprocess};
pub use wire::{Decoder, Frame, FrameError, Reading};
