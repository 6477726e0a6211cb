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

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rumqttc::{Client, Connection, Event as MqttEvent, LastWill, Outgoing, Packet, QoS, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::{Event, Publisher, Status};
use crate::backoff::Backoff;

/// The longest `client_id` accepted, in bytes.
pub const MAX_CLIENT_ID: usize = 64;
/// The longest `topic_prefix` or `discovery_prefix` accepted, in bytes.
pub const MAX_PREFIX: usize = 128;
/// The limit on the size of a packet sent or received (rumqttc's default, set explicitly).
const MAX_PACKET: usize = 10 * 1024;

/// MQTT settings (`[publish.mqtt]`; `--mqtt URL` turns it on with the defaults).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttOptions {
    /// The broker: `mqtt://host[:port]` (default port 1883) or `mqtts://host[:port]` (TLS, 8883).
    pub url: String,
    /// The MQTT client id, unique per broker; empty: this machine's host name.
    pub client_id: String,
    /// User name, if the broker wants one.
    pub username: Option<String>,
    /// A file holding the password (trailing newline ignored); never logged.
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password; never logged.
    pub password_env: Option<String>,
    /// PEM certificate(s) of the authority that signed the broker's certificate (`mqtts://`);
    /// unset: the system's roots (/etc/ssl/certs/ca-certificates.crt).
    pub ca_file: Option<PathBuf>,
    /// Topic prefix; empty: `fer-sensor/<client id>`.
    pub topic_prefix: String,
    /// Quality of service of every message: 0, 1 or 2.
    pub qos: u8,
    /// Besides every change, publish the state every this many frames (0: changes only).
    pub every_frames: u32,
    /// Announce the sensor to Home Assistant (MQTT discovery).
    pub discovery: bool,
    /// Home Assistant's discovery prefix.
    pub discovery_prefix: String,
    /// States kept while the broker is away; the oldest is dropped beyond this.
    pub queue: usize,
    /// Seconds between keep-alive pings; a sensor cut off the network is declared offline (its
    /// Last Will) after about 1.5 times this.
    pub keep_alive_s: u16,
}

impl Default for MqttOptions {
    fn default() -> Self {
        Self {
            url: "mqtt://localhost:1883".into(),
            client_id: String::new(),
            username: None,
            password_file: None,
            password_env: None,
            ca_file: None,
            topic_prefix: String::new(),
            qos: 1,
            every_frames: 0,
            discovery: true,
            discovery_prefix: "homeassistant".into(),
            queue: 100,
            keep_alive_s: 15,
        }
    }
}

impl MqttOptions {
    /// Checks every key; the error names it.
    pub fn validate(&self) -> Result<()> {
        Broker::parse(&self.url).context("publish.mqtt.url")?;
        ensure!(self.qos <= 2, "publish.mqtt.qos = {} must be 0, 1 or 2", self.qos);
        ensure!(self.queue >= 1, "publish.mqtt.queue must be at least 1");
        ensure!(
            (5..=3600).contains(&self.keep_alive_s),
            "publish.mqtt.keep_alive_s = {} is out of range 5..=3600",
            self.keep_alive_s
        );
        ensure!(
            self.password_file.is_none() || self.password_env.is_none(),
            "publish.mqtt: password_file and password_env are both set; keep one"
        );
        ensure!(
            self.client_id.len() <= MAX_CLIENT_ID,
            "publish.mqtt.client_id is {} bytes long; {MAX_CLIENT_ID} at most",
            self.client_id.len()
        );
        for (key, topic) in [
            ("topic_prefix", &self.topic_prefix),
            ("discovery_prefix", &self.discovery_prefix),
        ] {
            // Discovery configs repeat the prefix: a long one makes every packet exceed the
            // client's packet size limit, and only the Last Will would ever arrive.
            ensure!(
                topic.len() <= MAX_PREFIX,
                "publish.mqtt.{key} is {} bytes long; {MAX_PREFIX} at most",
                topic.len()
            );
            ensure!(
                !topic.contains(['+', '#', '\0']) && !topic.starts_with('/') && !topic.ends_with('/'),
                "publish.mqtt.{key} = {topic:?}: no wildcards (+ #) and no leading or trailing /"
            );
        }
        ensure!(
            !self.discovery_prefix.is_empty(),
            "publish.mqtt.discovery_prefix is empty"
        );
        Ok(())
    }

    /// The client id: the configured one, or this machine's host name and a suffix drawn from
    /// its machine id, so that boards left with the same host name (every fresh `raspberrypi`)
    /// do not throw each other off the broker.
    pub fn client_id(&self) -> String {
        if !self.client_id.is_empty() {
            return self.client_id.clone();
        }
        // Linux's own answer; the gethostname crate would switch on a rustix feature that
        // recompiles Burn and tract through their shared tempfile dependency.
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host = match host.trim() {
            "" => "fer-sensor",
            host => host,
        };
        match machine_suffix() {
            Some(suffix) => format!("{host}-{suffix}"),
            None => host.to_string(),
        }
    }

    /// The topic prefix: the configured one, or `fer-sensor/<client id>`.
    pub fn prefix(&self) -> String {
        if self.topic_prefix.is_empty() {
            format!("fer-sensor/{}", node_id(&self.client_id()))
        } else {
            self.topic_prefix.clone()
        }
    }

    /// The broker and the client settings to reach it as `client_id`: address, login and TLS.
    fn connection(&self, client_id: &str) -> Result<(Broker, rumqttc::MqttOptions)> {
        let broker = Broker::parse(&self.url).context("publish.mqtt.url")?;
        let mut mqtt = rumqttc::MqttOptions::new(client_id, broker.host.clone(), broker.port);
        mqtt.set_max_packet_size(MAX_PACKET, MAX_PACKET);
        if let Some(user) = &self.username {
            mqtt.set_credentials(user.as_str(), self.password()?.unwrap_or_default());
        }
        if broker.tls {
            mqtt.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(
                tls_config(self.ca_file.as_deref())?,
            ))));
        }
        Ok((broker, mqtt))
    }

    fn qos(&self) -> QoS {
        match self.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }

    /// The password, read from its file or environment variable, if one is configured.
    fn password(&self) -> Result<Option<String>> {
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("publish.mqtt.password_file {}", path.display()))?;
            return Ok(Some(text.trim_end_matches(['\r', '\n']).to_string()));
        }
        if let Some(var) = &self.password_env {
            let value = std::env::var(var).with_context(|| format!("publish.mqtt.password_env: ${var} is not set"))?;
            return Ok(Some(value));
        }
        Ok(None)
    }
}

/// Six hex digits of a hash of this machine's id: stable across reboots and reinstalls of the
/// sensor, different between boards, and not the id itself, which systemd asks programs not to
/// publish (machine-id(5)).
fn machine_suffix() -> Option<String> {
    let id = std::fs::read_to_string("/etc/machine-id").ok()?;
    let id = id.trim();
    if id.is_empty() {
        return None;
    }
    let digest = Sha256::digest(format!("fer-sensor client id:{id}"));
    Some(digest[..3].iter().map(|b| format!("{b:02x}")).collect())
}

/// Where the broker is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broker {
    /// TLS (`mqtts://`).
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
}

impl Broker {
    /// Parses `mqtt://host[:port]` or `mqtts://host[:port]` (host: a name, an IPv4 address or an
    /// IPv6 address in brackets). By hand: the `url` crate would pull in the ICU stack, whose
    /// derive macros change `syn`'s features and so recompile every macro user (Burn, tract).
    pub fn parse(url: &str) -> Result<Self> {
        // Every error quotes the URL with any password in it masked: errors reach logs.
        let text = &redacted(url);
        let (scheme, rest) = url
            .split_once("://")
            .with_context(|| format!("{text:?} is not a URL like mqtt://host:1883"))?;
        let tls = match scheme {
            "mqtt" | "tcp" => false,
            "mqtts" | "ssl" => true,
            other => bail!("{text:?}: scheme {other}:// is not mqtt:// or mqtts://"),
        };
        // Credentials in a URL end up in logs and `ps`: they belong in username/password_file.
        ensure!(
            !rest.contains('@'),
            "{text:?}: put credentials in publish.mqtt.username and password_file, not in the URL"
        );
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        ensure!(
            !authority.contains(['/', '?', '#']),
            "{text:?}: only mqtt[s]://host[:port] is understood (no path or query)"
        );
        let (host, port) = match authority.strip_prefix('[') {
            Some(v6) => {
                let (host, after) = v6.split_once(']').with_context(|| format!("{text:?}: unclosed ["))?;
                (host, after.strip_prefix(':'))
            }
            None => match authority.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        ensure!(
            !host.is_empty() && !host.contains(char::is_whitespace),
            "{text:?} has no host"
        );
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .with_context(|| format!("{text:?}: port {p:?} is not a number in 1..=65535"))?,
            None if tls => 8883,
            None => 1883,
        };
        Ok(Self {
            tls,
            host: host.to_string(),
            port,
        })
    }
}

/// `url` with whatever precedes its last `@` after the scheme (user and password) masked.
fn redacted(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_string();
    };
    let keep = url.find("://").map_or(0, |i| i + 3).min(at);
    format!("{}***{}", &url[..keep], &url[at..])
}

impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// A client id made safe for discovery topics and `unique_id`s: `[A-Za-z0-9_-]`, others become `_`.
pub fn node_id(client_id: &str) -> String {
    client_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The topics of one sensor.
#[derive(Clone, Debug)]
pub struct Topics {
    /// The retained JSON state.
    pub state: String,
    /// `online` / `offline`, retained, with `offline` as the Last Will.
    pub availability: String,
    /// Frame rate and timings at the status interval.
    pub status: String,
    /// Home Assistant's birth topic (`<discovery prefix>/status`), when discovery is on.
    pub ha_status: Option<String>,
    /// Home Assistant discovery configs: (topic, JSON payload), retained.
    pub discovery: Vec<(String, String)>,
}

/// The readings the expression sensor can take, for Home Assistant's `enum` device class.
fn reading_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = fer_protocol::Expression::ALL.iter().map(|e| e.name()).collect();
    names.extend(["uncertain", "no_face"]);
    names
}

impl Topics {
    /// The topics and discovery configs for `options`; `model` names the classifier (version and
    /// precision) in the Home Assistant device.
    pub fn new(options: &MqttOptions, model: &str) -> Self {
        let client_id = options.client_id();
        let node = node_id(&client_id);
        let prefix = options.prefix();
        let (state, availability, status) = (
            format!("{prefix}/state"),
            format!("{prefix}/availability"),
            format!("{prefix}/status"),
        );
        let device = json!({
            "identifiers": [format!("fer-sensor_{node}")],
            "name": format!("fer-sensor {client_id}"),
            "model": format!("fer-sensor, classifier {model}"),
            "sw_version": env!("CARGO_PKG_VERSION"),
        });
        let d = &options.discovery_prefix;
        // One entity's (topic, config): what every entity shares, plus its own fields.
        let entity = |kind: &str, object: &str, name: &str, topic: &str, own: serde_json::Value| {
            let mut config = json!({
                "name": name,
                "unique_id": format!("fer-sensor_{node}_{object}"),
                "state_topic": topic,
                "availability_topic": availability,
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": device,
                "origin": {"name": "fer-sensor", "sw_version": env!("CARGO_PKG_VERSION")},
            });
            if let (Some(config), serde_json::Value::Object(own)) = (config.as_object_mut(), own) {
                config.extend(own);
            }
            (format!("{d}/{kind}/{node}/{object}/config"), config.to_string())
        };
        let discovery = if options.discovery {
            vec![
                entity(
                    "sensor",
                    "expression",
                    "Expression",
                    &state,
                    json!({
                        "value_template": "{{ value_json.reading }}",
                        "device_class": "enum",
                        "options": reading_names(),
                        "icon": "mdi:emoticon-outline",
                        "json_attributes_topic": state,
                        "json_attributes_template":
                            "{{ {'confidence': value_json.confidence, 'faces': value_json.faces, 'face': value_json.face} | tojson }}",
                    }),
                ),
                entity(
                    "binary_sensor",
                    "face",
                    "Face",
                    &state,
                    json!({
                        "value_template": "{{ 'ON' if value_json.faces > 0 else 'OFF' }}",
                        "device_class": "occupancy",
                    }),
                ),
                entity(
                    "sensor",
                    "fps",
                    "Frame rate",
                    &status,
                    json!({
                        "value_template": "{{ value_json.fps }}",
                        "unit_of_measurement": "fps",
                        "state_class": "measurement",
                        "entity_category": "diagnostic",
                        "icon": "mdi:speedometer",
                    }),
                ),
            ]
        } else {
            Vec::new()
        };
        Self {
            state,
            availability,
            status,
            ha_status: options.discovery.then(|| format!("{d}/status")),
            discovery,
        }
    }
}

/// One queued message.
#[derive(Clone, Debug, PartialEq)]
struct Message {
    topic: String,
    payload: String,
    retain: bool,
}

/// What waits for the broker: a bounded queue that drops its oldest, and the last state sent.
#[derive(Debug)]
struct Outbox {
    queue: VecDeque<Message>,
    capacity: usize,
    dropped: u64,
    /// Drops since the last connect, for one warning per outage.
    dropped_while_away: u64,
    latest_state: Option<String>,
}

impl Outbox {
    fn new(capacity: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            capacity,
            dropped: 0,
            dropped_while_away: 0,
            latest_state: None,
        }
    }

    fn push(&mut self, message: Message) {
        if self.queue.len() >= self.capacity {
            self.queue.pop_front();
            self.dropped += 1;
            if self.dropped_while_away == 0 {
                warn!(
                    "mqtt: {} states queued while the broker is away; dropping the oldest from now on",
                    self.capacity
                );
            }
            self.dropped_while_away += 1;
        }
        self.queue.push_back(message);
    }

    /// Hands queued messages to the client while it takes them without waiting.
    fn flush(&mut self, client: &Client, qos: QoS) {
        while let Some(m) = self.queue.front() {
            if client
                .try_publish(m.topic.as_str(), qos, m.retain, m.payload.as_bytes())
                .is_err()
            {
                // The client's channel is full: the rest goes at the next flush.
                break;
            }
            self.queue.pop_front();
        }
    }
}

/// State shared by the frame loop and the connection thread.
struct Shared {
    outbox: Mutex<Outbox>,
    connected: AtomicBool,
    stop: AtomicBool,
    topics: Topics,
    qos: QoS,
    client_id: String,
}

impl Shared {
    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // A panic elsewhere while holding the lock leaves a queue that is still a valid queue.
        self.outbox.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// After a connect, or when Home Assistant comes online: listen for Home Assistant's
    /// restarts, (re)send the discovery configs and `online`, then what is queued, and the
    /// current state unless a queued one carries it.
    fn announce(&self, client: &Client) {
        let mut out = self.outbox();
        let t = &self.topics;
        if let Some(ha) = &t.ha_status {
            let _ = client.try_subscribe(ha.as_str(), QoS::AtLeastOnce);
        }
        for (topic, config) in &t.discovery {
            let _ = client.try_publish(topic.as_str(), self.qos, true, config.as_bytes());
        }
        let _ = client.try_publish(t.availability.as_str(), self.qos, true, "online");
        if !out.queue.iter().any(|m| m.topic == t.state)
            && let Some(state) = out.latest_state.clone()
        {
            out.queue.push_back(Message {
                topic: t.state.clone(),
                payload: state,
                retain: true,
            });
        }
        out.flush(client, self.qos);
    }
}

/// The first wait before reconnecting to a broker that failed; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a clean shutdown waits for `offline` and the disconnect to leave.
const GOODBYE: Duration = Duration::from_secs(1);

/// Publishes to an MQTT broker; see the module docs.
pub struct Mqtt {
    client: Client,
    shared: Arc<Shared>,
    every_frames: u64,
    frames: u64,
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
            stop: AtomicBool::new(false),
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
            every_frames: options.every_frames.into(),
            frames: 0,
            label: format!("mqtt {broker}"),
            driver: Some((handle, done_rx)),
        })
    }
}

/// The TLS settings: the broker's certificate must chain to `ca_file`, or to the system roots.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = ca_file.unwrap_or(std::path::Path::new("/etc/ssl/certs/ca-certificates.crt"));
    let key = if ca_file.is_some() {
        "publish.mqtt.ca_file"
    } else {
        "the system roots"
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).with_context(|| format!("{key} {}", path.display()))? {
        let cert = cert.with_context(|| format!("{key} {}", path.display()))?;
        roots
            .add(cert)
            .with_context(|| format!("{key} {}: a certificate is not usable", path.display()))?;
    }
    ensure!(!roots.is_empty(), "{key} {}: no PEM certificate in it", path.display());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The connection thread: drives rumqttc's event loop, announces on every connect, flushes the
/// queue as the client takes it, and backs off after failures (one log line per attempt; the
/// wait starts over only after a connection that lasted, see [`Backoff`]). It ends when the
/// client has sent its disconnect, so a clean stop reaches the broker before the socket closes.
fn drive(mut connection: Connection, client: Client, shared: Arc<Shared>, broker: String, done: SyncSender<()>) {
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut connected_at = None;
    loop {
        match connection.recv() {
            // Every client handle is gone.
            Err(_) => break,
            Ok(Ok(MqttEvent::Incoming(Packet::ConnAck(_)))) => {
                backoff.connected();
                connected_at = Some(Instant::now());
                shared.connected.store(true, Ordering::SeqCst);
                let dropped = std::mem::take(&mut shared.outbox().dropped_while_away);
                if dropped > 0 {
                    info!("mqtt: connected to {broker}; {dropped} states were dropped while it was away");
                } else {
                    info!("mqtt: connected to {broker}");
                }
                shared.announce(&client);
            }
            Ok(Ok(MqttEvent::Incoming(Packet::Publish(p))))
                if shared.topics.ha_status.as_deref() == Some(p.topic.as_str()) && &p.payload[..] == b"online" =>
            {
                info!("mqtt: Home Assistant is online; announcing again");
                shared.announce(&client);
            }
            Ok(Ok(MqttEvent::Outgoing(Outgoing::Disconnect))) => break,
            Ok(Ok(_)) => shared.outbox().flush(&client, shared.qos),
            Ok(Err(e)) => {
                shared.connected.store(false, Ordering::SeqCst);
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
                let hint = match connected_at.take() {
                    Some(at) if backoff.up_briefly() => format!(
                        " {:.0} s after the broker accepted us: is another client connected with our id {:?} \
                         (two boards left with one host name and client_id)? Or does the broker's ACL refuse our topics?",
                        at.elapsed().as_secs_f32(),
                        shared.client_id
                    ),
                    _ => String::new(),
                };
                let wait = backoff.failed();
                warn!("mqtt {broker}: {e}{hint}; other outputs carry on, retrying in {wait:?}");
                let until = Instant::now() + wait;
                while Instant::now() < until && !shared.stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if shared.stop.load(Ordering::SeqCst) {
                    break;
                }
            }
        }
    }
    let _ = done.send(());
}

impl Publisher for Mqtt {
    fn name(&self) -> String {
        self.label.clone()
    }

    fn publish(&mut self, event: &Event) -> Result<()> {
        self.frames += 1;
        let due = event.decision.changed || (self.every_frames > 0 && self.frames.is_multiple_of(self.every_frames));
        if !due {
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
        self.shared.stop.store(true, Ordering::SeqCst);
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
        let _ = self.client.try_publish(
            self.shared.topics.availability.as_str(),
            self.shared.qos,
            true,
            "offline",
        );
        let _ = self.client.try_disconnect();
        match done.recv_timeout(GOODBYE) {
            Ok(()) => {
                let _ = handle.join();
            }
            Err(_) => warn!("{}: the broker did not take our goodbye within {GOODBYE:?}", self.label),
        }
        Ok(())
    }
}

/// `--check`: connects once and waits for the broker's answer (at most `timeout`).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_parse_with_default_ports_and_refuse_what_would_leak_or_be_ignored() {
        let b = Broker::parse("mqtt://broker.local").unwrap();
        assert_eq!((b.tls, b.host.as_str(), b.port), (false, "broker.local", 1883));
        let b = Broker::parse("mqtts://10.0.0.2:9000").unwrap();
        assert_eq!((b.tls, b.host.as_str(), b.port), (true, "10.0.0.2", 9000));
        assert_eq!(
            Broker::parse("mqtts://[::1]").unwrap().to_string(),
            "mqtts://[::1]:8883"
        );
        let err = |url: &str| format!("{:#}", Broker::parse(url).unwrap_err());
        assert!(err("http://x").contains("not mqtt:// or mqtts://"));
        assert!(err("mqtt://user:secret@x").contains("not in the URL"));
        assert!(!err("mqtt://user:secret@x").contains("secret"));
        assert!(!err("mqtt://fer:SECRET@127.0.0.1:1883/path").contains("SECRET"));
        assert!(!err("mqtt://fer:SE@CRET@127.0.0.1:99999").contains("CRET"));
        assert!(
            !err("mqtt:/fer:SECRET@x").contains("SECRET"),
            "{}",
            err("mqtt:/fer:SECRET@x")
        );
        assert!(err("mqtt://x/topic").contains("no path"));
        assert!(err("broker:1883").contains("not a URL"));
        assert!(err("mqtt://x:99999").contains("port \"99999\""));
        assert!(err("mqtt://:1883").contains("has no host"));
    }

    #[test]
    fn settings_that_cannot_work_are_refused_with_their_key() {
        let err = |o: MqttOptions| format!("{:#}", o.validate().unwrap_err());
        let d = MqttOptions::default;
        assert!(d().validate().is_ok());
        assert!(err(MqttOptions { qos: 3, ..d() }).contains("publish.mqtt.qos = 3"));
        assert!(err(MqttOptions { queue: 0, ..d() }).contains("publish.mqtt.queue"));
        assert!(
            err(MqttOptions {
                topic_prefix: "a/#".into(),
                ..d()
            })
            .contains("topic_prefix")
        );
        assert!(
            err(MqttOptions {
                url: "mqtt://".into(),
                ..d()
            })
            .contains("publish.mqtt.url")
        );
        let both = MqttOptions {
            password_file: Some("p".into()),
            password_env: Some("P".into()),
            ..d()
        };
        assert!(err(both).contains("both set"));
    }

    #[test]
    fn the_default_client_id_is_the_host_name_with_a_suffix_from_the_machine_id() {
        let id = MqttOptions::default().client_id();
        assert_eq!(id, MqttOptions::default().client_id(), "stable");
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert!(id.starts_with(host.trim()), "{id}");
        let machine = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
        if !machine.trim().is_empty() {
            let suffix = &id[host.trim().len()..];
            assert!(
                suffix.len() == 7 && suffix.starts_with('-') && suffix[1..].chars().all(|c| c.is_ascii_hexdigit()),
                "{id}"
            );
            assert!(
                !machine.contains(&suffix[1..]),
                "the machine id itself is not published"
            );
        }
    }

    #[test]
    fn the_longest_ids_and_prefixes_accepted_still_fit_every_packet() {
        let options = MqttOptions {
            client_id: "c".repeat(MAX_CLIENT_ID),
            topic_prefix: "t".repeat(MAX_PREFIX),
            discovery_prefix: "d".repeat(MAX_PREFIX),
            ..MqttOptions::default()
        };
        options.validate().unwrap();
        let topics = Topics::new(&options, &"m".repeat(64));
        for (topic, payload) in &topics.discovery {
            // The fixed header, the topic's length prefix and the packet id take under 16 bytes.
            assert!(
                topic.len() + payload.len() + 16 <= MAX_PACKET,
                "{topic}: {} bytes",
                payload.len()
            );
        }
        let err = |o: MqttOptions| format!("{:#}", o.validate().unwrap_err());
        assert!(
            err(MqttOptions {
                topic_prefix: "t".repeat(3500),
                ..MqttOptions::default()
            })
            .contains("publish.mqtt.topic_prefix is 3500 bytes long; 128 at most")
        );
        assert!(
            err(MqttOptions {
                client_id: "c".repeat(70_000),
                ..MqttOptions::default()
            })
            .contains("publish.mqtt.client_id is 70000 bytes long")
        );
    }

    #[test]
    fn discovery_wires_three_entities_to_one_device_and_to_availability() {
        let options = MqttOptions {
            client_id: "hall cam.1".into(),
            ..MqttOptions::default()
        };
        let topics = Topics::new(&options, "v2 (int8)");
        assert_eq!(topics.state, "fer-sensor/hall_cam_1/state");
        assert_eq!(topics.ha_status.as_deref(), Some("homeassistant/status"));
        let configs: Vec<(String, serde_json::Value)> = topics
            .discovery
            .iter()
            .map(|(t, p)| (t.clone(), serde_json::from_str(p).unwrap()))
            .collect();
        let names: Vec<&str> = configs.iter().map(|(t, _)| t.as_str()).collect();
        assert_eq!(
            names,
            [
                "homeassistant/sensor/hall_cam_1/expression/config",
                "homeassistant/binary_sensor/hall_cam_1/face/config",
                "homeassistant/sensor/hall_cam_1/fps/config",
            ]
        );
        let mut ids: Vec<&str> = configs.iter().map(|(_, c)| c["unique_id"].as_str().unwrap()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 3, "unique ids differ");
        for (_, c) in &configs {
            assert_eq!(c["availability_topic"], "fer-sensor/hall_cam_1/availability");
            assert_eq!(c["device"]["identifiers"][0], "fer-sensor_hall_cam_1");
            assert_eq!(c["device"]["model"], "fer-sensor, classifier v2 (int8)");
        }
        assert_eq!(configs[0].1["options"].as_array().unwrap().len(), 9);
        assert_eq!(configs[2].1["state_topic"], "fer-sensor/hall_cam_1/status");
        let off = Topics::new(
            &MqttOptions {
                discovery: false,
                ..options
            },
            "v2",
        );
        assert!(off.discovery.is_empty() && off.ha_status.is_none());
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_counts() {
        let mut out = Outbox::new(2);
        for i in 0..5 {
            out.push(Message {
                topic: "s".into(),
                payload: i.to_string(),
                retain: true,
            });
        }
        let left: Vec<&str> = out.queue.iter().map(|m| m.payload.as_str()).collect();
        assert_eq!((left, out.dropped), (vec!["3", "4"], 3));
    }

    #[test]
    fn a_password_comes_from_its_file_without_the_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        let o = MqttOptions {
            password_file: Some(path),
            ..MqttOptions::default()
        };
        assert_eq!(o.password().unwrap().as_deref(), Some("s3cret"));
        let missing = MqttOptions {
            password_env: Some("FER_TEST_NO_SUCH_VAR".into()),
            ..MqttOptions::default()
        };
        assert!(format!("{:#}", missing.password().unwrap_err()).contains("$FER_TEST_NO_SUCH_VAR is not set"));
    }
}
