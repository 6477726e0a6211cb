//! The MQTT settings, their validation, and the client settings they make: the client id, login
//! and TLS.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use rumqttc::{QoS, TlsConfiguration, Transport};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::broker::Broker;

/// The longest `client_id` accepted, in bytes.
pub const MAX_CLIENT_ID: usize = 64;
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

/// The longest `topic_prefix` or `discovery_prefix` accepted, in bytes.
pub const MAX_PREFIX: usize = 128;
/// The most states `queue` may keep while the broker is away.
pub const MAX_QUEUE: usize = 10_000;
/// The limit on the size of a packet sent or received (rumqttc's default, set explicitly).
pub(super) const MAX_PACKET: usize = 10 * 1024;

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
    #[serde(deserialize_with = "crate::publish::every_frames", alias = "every_frame")]
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
        // Each queued state is a few hundred bytes; a bound keeps a long outage from filling the
        // board's memory.
        ensure!(
            (1..=MAX_QUEUE).contains(&self.queue),
            "publish.mqtt.queue = {} is out of range 1..={MAX_QUEUE}",
            self.queue
        );
        ensure!(
            (5..=3600).contains(&self.keep_alive_s),
            "publish.mqtt.keep_alive_s = {} is out of range 5..=3600",
            self.keep_alive_s
        );
        ensure!(
            self.password_file.is_none() || self.password_env.is_none(),
            "publish.mqtt: password_file and password_env are both set; keep one"
        );
        // MQTT sends a password only with a user name: without one it would be dropped unseen.
        ensure!(
            self.username.is_some() || (self.password_file.is_none() && self.password_env.is_none()),
            "publish.mqtt: a password is configured but no username; brokers take a password only with one"
        );
        ensure!(
            !self.client_id.chars().any(char::is_control),
            "publish.mqtt.client_id {:?} holds control characters, which brokers refuse",
            self.client_id
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
    pub(super) fn connection(&self, client_id: &str) -> Result<(Broker, rumqttc::MqttOptions)> {
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

    pub(super) fn qos(&self) -> QoS {
        match self.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }

    /// The password, read from its file or environment variable, if one is configured.
    pub(super) fn password(&self) -> Result<Option<String>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::publish::mqtt::discovery::Topics;

    #[test]
    fn settings_that_cannot_work_are_refused_with_their_key() {
        let err = |o: MqttOptions| format!("{:#}", o.validate().unwrap_err());
        let d = MqttOptions::default;
        assert!(d().validate().is_ok());
        assert!(err(MqttOptions { qos: 3, ..d() }).contains("publish.mqtt.qos = 3"));
        assert!(err(MqttOptions { queue: 0, ..d() }).contains("publish.mqtt.queue"));
        assert!(
            err(MqttOptions {
                queue: 10_000_000,
                ..d()
            })
            .contains("publish.mqtt.queue = 10000000")
        );
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
        let anonymous = MqttOptions {
            password_env: Some("P".into()),
            ..d()
        };
        assert!(err(anonymous).contains("no username"));
        let nul = MqttOptions {
            client_id: "a\0b".into(),
            ..d()
        };
        assert!(err(nul).contains("control characters"));
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
