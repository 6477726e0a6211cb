//! Serial publisher: the binary frames of [`fer_protocol::wire`] or JSON lines on a UART or any
//! tty (USB adapters, pseudo-terminals), opened through rppal.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rppal::uart::{Parity, Uart};

use super::{Event, Publisher};

/// What goes on the line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// The 9-byte frames of `fer_protocol::wire` (a microcontroller decodes them with
    /// `fer_protocol::Decoder`).
    #[default]
    Binary,
    /// One JSON object per line, as on stdout.
    Json,
}

/// Serial settings.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SerialOptions {
    /// The tty: `/dev/serial0` is the Pi's primary UART on the header (GPIO 14 TX, 15 RX).
    pub port: PathBuf,
    /// Line speed in baud (8 data bits, no parity, 1 stop bit).
    pub baud: u32,
    /// Binary frames or JSON lines.
    pub mode: Mode,
    /// Send every frame (a heartbeat the receiver can count lost frames by) instead of only
    /// changes.
    pub every_frame: bool,
}

impl Default for SerialOptions {
    fn default() -> Self {
        Self {
            port: PathBuf::from("/dev/serial0"),
            baud: 115_200,
            mode: Mode::Binary,
            every_frame: true,
        }
    }
}

/// A byte link: the publisher writes to it, the self-test also reads its loopback.
pub trait SerialPort {
    /// Sends all of `bytes`.
    fn send(&mut self, bytes: &[u8]) -> Result<()>;
    /// Reads what has arrived within `timeout` into `buffer`; 0 when nothing came.
    fn receive(&mut self, buffer: &mut [u8], timeout: Duration) -> Result<usize>;
}

/// How long one message may take to leave: a receiver that stopped reading (or hardware flow
/// control held off) must not stall the frame loop.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Opens a tty as a UART, 8N1, non-blocking writes (sends wait at most [`WRITE_TIMEOUT`]).
pub fn open(port: &Path, baud: u32) -> Result<Uart> {
    let mut uart = Uart::with_path(port, baud, Parity::None, 8, 1)
        .with_context(|| format!("opening serial port {} at {baud} baud", port.display()))?;
    uart.set_write_mode(false)?;
    Ok(uart)
}

impl SerialPort for Uart {
    fn send(&mut self, bytes: &[u8]) -> Result<()> {
        let deadline = Instant::now() + WRITE_TIMEOUT;
        let mut sent = 0;
        while sent < bytes.len() {
            let n = self.write(&bytes[sent..])?;
            sent += n;
            if n == 0 {
                if Instant::now() >= deadline {
                    bail!(
                        "write timed out after {WRITE_TIMEOUT:?} with {sent} of {} bytes sent (is the other end reading?)",
                        bytes.len()
                    );
                }
                // The output buffer is full: at 9600 baud a byte leaves every ~1 ms.
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        Ok(())
    }

    fn receive(&mut self, buffer: &mut [u8], timeout: Duration) -> Result<usize> {
        // VTIME counts tenths of a second; rppal rejects anything above 25.5 s.
        self.set_read_mode(0, timeout.min(Duration::from_millis(25_500)))?;
        Ok(self.read(buffer)?)
    }
}

/// Publishes events on a serial port.
pub struct Serial<S: SerialPort> {
    port: S,
    mode: Mode,
    every_frame: bool,
    label: String,
}

impl<S: SerialPort> Serial<S> {
    /// Publishes on `port`; `label` names it in logs.
    pub fn new(port: S, mode: Mode, every_frame: bool, label: &str) -> Self {
        Self {
            port,
            mode,
            every_frame,
            label: label.to_string(),
        }
    }
}

impl<S: SerialPort> Publisher for Serial<S> {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn publish(&mut self, event: &Event) -> Result<()> {
        if !(self.every_frame || event.decision.changed) {
            return Ok(());
        }
        match self.mode {
            Mode::Binary => self.port.send(&event.frame().encode()),
            Mode::Json => self.port.send(format!("{}\n", event.json()).as_bytes()),
        }
        .with_context(|| format!("writing to {}", self.label))
    }
}
