//! MQTT publisher: the reading as a retained JSON state, availability with a Last Will, a status
//! topic with the frame rate and per-stage timings, and Home Assistant discovery, on rumqttc.
//!
//! The connection lives on its own thread; the frame loop only queues. A broker that is down,
//! slow, refusing or failing its TLS handshake never stalls sensing: while disconnected, states
//! wait in a bounded queue (oldest dropped first, drops counted and reported in the status), and
//! on every (re)connect the sensor announces itself again and republishes its current state.
//!
//! Topics under the prefix (default `fer-sensor/<client id>`):
//! - `state`: the JSON event stdout prints, retained; on change, or also every N frames;
//! - `availability`: `online` / `offline`, retained; `offline` is the Last Will, so a sensor that
//!   dies shows up as unavailable;
//! - `status`: frame rate, per-stage timings and queue drops at the status interval.
//!
//! No image, crop or embedding is ever published: the payloads are the ones built here.
//!
//! The parts: [`options`] (settings, validation, client id, login and TLS), [`broker`] (the URL),
//! [`discovery`] (topics and Home Assistant configs), `outbox` (what waits for the broker) and
//! `connection` (the thread that talks to it); this module joins them into a [`Publisher`].

pub mod broker;
mod connection;
pub mod discovery;
pub mod options;
mod outbox;

use std::sync::atomic::AtomicBool;
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rumqttc::{Client, Event as MqttEvent, LastWill, Packet};
use serde::Serialize;
use tracing::{info, warn};

pub use self::broker::Broker;
use self::connection::{LINGER, Shared, drive};
pub use self::discovery::Topics;
pub use self::options::{MAX_CLIENT_ID, MAX_PREFIX, MqttOptions, node_id};
use self::outbox::{Message, Outbox};
use super::{Cadence, Event, Publisher, Status};
use crate::Stop;

/// How long a clean shutdown waits for `offline` and the disconnect to leave (and then up to
/// [`LINGER`] more for the broker to close the connection).
const GOODBYE: Duration = Duration::from_secs(1);

/// Publishes to an MQTT broker; see the module docs.
pub struct Mqtt {
    client: Client,
    shared: Arc<Shared>,
    cadence: Cadence,
    label: String,
    driver: Option<(JoinHandle<()>, Receiver<()>)>,
}

impl Mqtt {
    /// Starts connecting to the broker in the background; fails only on settings that cannot
    /// work (an unreadable CA or password file), never because the broker is down.
    pub fn start(options: &MqttOptions, model: &str) -> Result<Self> {
        let topics = Topics::new(options, model);
        let (broker, mut mqtt) = options.connection(&options.client_id())?;
        mqtt.set_keep_alive(Duration::from_secs(options.keep_alive_s.into()))
            .set_clean_session(true)
            .set_last_will(LastWill::new(
                topics.availability.as_str(),
                "offline",
                options.qos(),
                true,
            ));
        let (client, connection) = Client::new(mqtt, 64);
        let shared = Arc::new(Shared {
            outbox: Mutex::new(Outbox::new(options.queue)),
            connected: AtomicBool::new(false),
            stop: Stop::default(),
            topics,
            qos: options.qos(),
            client_id: options.client_id(),
        });
        let (done_tx, done_rx) = sync_channel(1);
        let (c, s, b) = (client.clone(), shared.clone(), broker.to_string());
        let handle = std::thread::Builder::new()
            .name("mqtt".into())
            .spawn(move || drive(connection, c, s, b, done_tx))
            .context("starting the MQTT thread")?;
        Ok(Self {
            client,
            shared,
            cadence: Cadence::new(options.every_frames),
            label: format!("mqtt {broker}"),
            driver: Some((handle, done_rx)),
        })
    }
}

impl Publisher for Mqtt {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn publish(&mut self, event: &Event) -> Result<()> {
        if !self.cadence.due(event) {
            return Ok(());
        }
        let payload = event.json();
        let mut out = self.shared.outbox();
        out.latest_state = Some(payload.clone());
        out.push(Message {
            topic: self.shared.topics.state.clone(),
            payload,
            retain: true,
        });
        if self.shared.connected() {
            out.flush(&self.client, self.shared.qos);
        }
        Ok(())
    }

    fn status(&mut self, status: &Status) -> Result<()> {
        // A stale frame rate is worth nothing: statuses are sent only while connected.
        if self.shared.connected() {
            #[derive(Serialize)]
            struct WithDrops<'a> {
                #[serde(flatten)]
                status: &'a Status,
                mqtt_dropped: u64,
            }
            let mut out = self.shared.outbox();
            let payload = serde_json::to_string(&WithDrops {
                status,
                mqtt_dropped: out.dropped,
            })?;
            out.push(Message {
                topic: self.shared.topics.status.clone(),
                payload,
                retain: false,
            });
            out.flush(&self.client, self.shared.qos);
        }
        Ok(())
    }

    /// Says `offline` and disconnects (a clean disconnect does not fire the Last Will), waiting
    /// at most [`GOODBYE`] for both to leave. Not connected, it does not wait: the broker already
    /// counts us gone, or never knew us.
    fn shutdown(&mut self) -> Result<()> {
        let Some((handle, done)) = self.driver.take() else {
            return Ok(());
        };
        self.shared.stop.request();
        let dropped = self.shared.outbox().dropped;
        if dropped > 0 {
            warn!(
                "{}: {dropped} states dropped in all while the broker was away",
                self.label
            );
        }
        if !self.shared.connected() {
            info!("{}: not connected; no goodbye to say", self.label);
            return Ok(());
        }
        // The client's channel may be full of states; it drains while we retry, and nothing
        // refills it once `stop` is set.
        let deadline = Instant::now() + GOODBYE;
        let availability = self.shared.topics.availability.as_str();
        // A full channel and a closed one fail alike; the thread ending tells them apart.
        let said = retry_until(deadline, &handle, || {
            self.client
                .try_publish(availability, self.shared.qos, true, "offline")
                .is_ok()
        }) && retry_until(deadline, &handle, || self.client.try_disconnect().is_ok());
        if !said {
            warn!(
                "{}: the connection ended, or stayed full for {GOODBYE:?}: no goodbye said",
                self.label
            );
            return Ok(());
        }
        // The thread reads for up to LINGER after the disconnect leaves; that is waited out too.
        match done.recv_timeout(deadline.saturating_duration_since(Instant::now()) + LINGER) {
            Ok(()) => {
                let _ = handle.join();
            }
            Err(_) => warn!("{}: the broker did not take our goodbye within {GOODBYE:?}", self.label),
        }
        Ok(())
    }
}

/// Calls `attempt` every few milliseconds until it succeeds (true), or `deadline` passes or the
/// connection thread ends (false).
fn retry_until(deadline: Instant, thread: &JoinHandle<()>, mut attempt: impl FnMut() -> bool) -> bool {
    loop {
        if attempt() {
            return true;
        }
        if Instant::now() >= deadline || thread.is_finished() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `fer-sensor check`: connects once and waits for the broker's answer (at most `timeout`).
pub fn probe(options: &MqttOptions, timeout: Duration) -> Result<String> {
    let (broker, mqtt) = options.connection(&format!("{}-check", options.client_id()))?;
    let (client, mut connection) = Client::new(mqtt, 4);
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        ensure!(!left.is_zero(), "no answer within {timeout:?}");
        match connection.recv_timeout(left) {
            Ok(Ok(MqttEvent::Incoming(Packet::ConnAck(_)))) => {
                let _ = client.try_disconnect();
                return Ok(format!("{broker} accepts us; topics under {}", options.prefix()));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("{e}"),
            Err(_) => bail!("no answer within {timeout:?}"),
        }
    }
}
