//! The device program of the facial-expression sensor: frames from a camera, stdin or files;
//! faces found by BlazeFace and aligned; expressions classified by the exported model with
//! tract; decisions smoothed over frames and published on GPIO pins, a serial line and stdout.
//!
//! Data flows one way through the modules: [`source`] → [`detect`] → [`align`] → [`classify`] →
//! [`decide`] → [`publish`]; [`sensor`] joins them, [`config`] holds every setting, [`selftest`]
//! checks a device in the field and [`golden`] the model against its golden vectors.
#![warn(missing_docs)]

pub mod align;
pub mod classify;
pub mod config;
pub mod decide;
pub mod detect;
pub mod golden;
pub mod publish;
pub mod selftest;
pub mod sensor;
pub mod source;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A shared "please stop" flag, set by SIGINT/SIGTERM, polled by the main loop and by sources
/// that wait (a camera reconnecting).
#[derive(Clone, Debug, Default)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    /// Asks everything holding this flag to stop.
    pub fn request(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a stop was asked for.
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
