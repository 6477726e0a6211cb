//! Serial publisher: the binary frames of [`fer_protocol::wire`] or JSON lines on a UART or any
//! tty (USB adapters, pseudo-terminals), opened through rppal.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rppal::uart::{Parity, Uart};

use super::outlet::{DRAIN, Outlet, QUEUE};
use super::{Cadence, Event, Publisher};

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
    /// Besides every change, send every N-th frame (1, the default: every frame, a heartbeat
    /// the receiver can count lost frames by; 0: changes only).
    #[serde(deserialize_with = "super::every_frames", alias = "every_frame")]
    pub every_frames: u32,
}

impl Default for SerialOptions {
    fn default() -> Self {
        Self {
            port: PathBuf::from("/dev/serial0"),
            baud: 115_200,
            mode: Mode::Binary,
            every_frames: 1,
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

/// How long one message of the self-test's loopback may take to leave.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Opens a tty as a UART, 8N1, non-blocking writes.
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
                        "write timed out after {WRITE_TIMEOUT:?} with {sent} of {} bytes sent (is the \
                        other end reading?)",
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

/// A UART as the publisher's writer thread writes to it: non-blocking, so a full output buffer
/// takes no bytes (the thread waits it out) instead of blocking a close.
pub struct UartWriter(pub Uart);

impl Write for UartWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.write(buf).map_err(|e| match e {
            rppal::uart::Error::Io(e) => e,
            other => std::io::Error::other(other),
        })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Publishes events on a serial port, written on their own thread (see [`Outlet`]): a receiver
/// that stops reading costs dropped messages, never a stalled frame loop or half a message.
pub struct Serial {
    outlet: Outlet,
    mode: Mode,
    cadence: Cadence,
    label: String,
}

impl Serial {
    /// Publishes on `port` at the [`Cadence`] of `every_frames`; `label` names it in logs.
    pub fn new(port: impl Write + Send + 'static, mode: Mode, every_frames: u32, label: &str) -> Result<Self> {
        Ok(Self {
            outlet: Outlet::spawn(port, label, QUEUE).with_context(|| format!("starting the {label} writer"))?,
            mode,
            cadence: Cadence::new(every_frames),
            label: label.to_string(),
        })
    }

    /// Messages dropped because the receiver did not keep up.
    pub fn dropped(&self) -> u64 {
        self.outlet.dropped()
    }
}

impl Publisher for Serial {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn publish(&mut self, event: &Event) -> Result<()> {
        if !self.cadence.due(event) {
            return Ok(());
        }
        let bytes = match self.mode {
            Mode::Binary => event.frame().encode().to_vec(),
            Mode::Json => format!("{}\n", event.json()).into_bytes(),
        };
        self.outlet
            .send(bytes)
            .with_context(|| format!("writing to {}", self.label))
    }

    fn shutdown(&mut self) -> Result<()> {
        self.outlet.close(DRAIN);
        Ok(())
    }
}
