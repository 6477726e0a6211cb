//! fer-sensor against a real Mosquitto broker on 127.0.0.1 (started here on a free port with a
//! generated config): Home Assistant discovery, retained state in order, availability with the
//! Last Will, recovery after the broker restarts, credentials and TLS with a CA made here. Each
//! wait is bounded. Needs `mosquitto` (Debian package `mosquitto`, `.ci/run` installs it):
//! without it the tests skip, except under CI=true, where a skip is a failure.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{Client, Event, MqttOptions, Packet, QoS};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The broker binary, or `None` (skip) outside CI.
fn mosquitto() -> Option<PathBuf> {
    let found = ["/usr/sbin/mosquitto", "/usr/bin/mosquitto", "/usr/local/sbin/mosquitto"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists());
    if found.is_none() {
        let why = "mosquitto is not installed (apt-get install mosquitto)";
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{why}; CI must run these tests"
        );
        eprintln!("skipping: {why}");
    }
    found
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls `done` every 50 ms for at most `limit`.
fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// A Mosquitto process on 127.0.0.1 with a config written to a temporary folder.
struct Broker {
    binary: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    config: String,
    child: Option<Child>,
}

impl Broker {
    /// A broker on a free port, not started yet (`restart` starts it, once the files its config
    /// names are in place); `extra` is appended to its config and may use `{dir}` for its folder.
    fn prepare(binary: PathBuf, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        // `user root`: when the tests run as root, Mosquitto would otherwise switch to the
        // mosquitto user, who cannot read the temporary folder's files.
        let config = format!(
            "listener {port} 127.0.0.1\npersistence false\nuser root\nlog_type error\n{}",
            extra.replace("{dir}", dir.path().to_str().unwrap())
        );
        Self {
            binary,
            dir,
            port,
            config,
            child: None,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn restart(&mut self) {
        self.stop();
        std::fs::write(self.path("mosquitto.conf"), &self.config).unwrap();
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(self.path("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto");
        self.child = Some(child);
        let port = self.port;
        assert!(
            wait_until(Duration::from_secs(5), || TcpStream::connect(("127.0.0.1", port))
                .is_ok()),
            "mosquitto did not listen on {port} within 5 s"
        );
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("mqtt://127.0.0.1:{}", self.port)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One message as a subscriber saw it.
#[derive(Clone, Debug)]
struct Seen {
    topic: String,
    payload: String,
    retain: bool,
}

/// A client subscribed to `#`, resubscribing after every reconnect, recording what arrives.
struct Subscriber {
    seen: Arc<Mutex<Vec<Seen>>>,
    subscribed: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Subscriber {
    /// A subscriber that is in: subscribed within 5 s.
    fn start(port: u16, name: &str, login: Option<(&str, &str)>) -> Self {
        let this = Self::spawn(port, name, login);
        assert!(this.wait_subscribed(), "the test subscriber did not get in within 5 s");
        this
    }

    fn wait_subscribed(&self) -> bool {
        wait_until(Duration::from_secs(5), || self.subscribed.load(Ordering::SeqCst))
    }

    /// A subscriber that keeps trying to get in (the broker may not be up yet).
    fn spawn(port: u16, name: &str, login: Option<(&str, &str)>) -> Self {
        let mut options = MqttOptions::new(name, "127.0.0.1", port);
        options.set_keep_alive(Duration::from_secs(5));
        if let Some((user, password)) = login {
            options.set_credentials(user, password);
        }
        let (client, mut connection) = Client::new(options, 16);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let subscribed = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, ok, st) = (seen.clone(), subscribed.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::SeqCst) {
                match connection.recv_timeout(Duration::from_millis(200)) {
                    Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => {
                        client.try_subscribe("#", QoS::AtLeastOnce).unwrap();
                    }
                    Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => ok.store(true, Ordering::SeqCst),
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => s.lock().unwrap().push(Seen {
                        topic: p.topic.clone(),
                        payload: String::from_utf8_lossy(&p.payload).into_owned(),
                        retain: p.retain,
                    }),
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(_)) => std::thread::sleep(Duration::from_millis(100)),
                }
            }
        });
        Self { seen, subscribed, stop }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn on(&self, topic: &str) -> Vec<Seen> {
        self.seen().into_iter().filter(|s| s.topic == topic).collect()
    }

    /// Waits until a message on `topic` after the first `after` messages satisfies `check`.
    fn wait_for(&self, after: usize, topic: &str, limit: Duration, check: impl Fn(&Seen) -> bool) -> bool {
        wait_until(limit, || {
            self.seen().iter().skip(after).any(|s| s.topic == topic && check(s))
        })
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A running fer-sensor with its stdout lines collected.
struct Sensor {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sensor {
    /// Starts fer-sensor on the sample frames with `config` as its TOML configuration.
    fn start(config: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fer-sensor.toml");
        std::fs::write(&path, config).unwrap();
        let stderr = dir.path().join("stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_fer-sensor"))
            .current_dir(root())
            .arg("--config")
            .arg(&path)
            .args(["--classifier", "models/fer.f32.onnx", "--source", "samples"])
            .args(args)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("starting fer-sensor");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (out, l) = (child.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l.lock().unwrap().push(line);
            }
        });
        Self {
            child,
            lines,
            stderr,
            _dir: dir,
        }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let ok = Command::new("kill")
            .args([signal, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {signal}");
    }

    /// Waits at most `limit` for the process to end; its exit status.
    fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let end = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!("fer-sensor still running after {limit:?}; stderr:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Sensor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every JSON object key in `value`, at any depth.
fn keys(value: &serde_json::Value, into: &mut BTreeSet<String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                into.insert(k.clone());
                keys(v, into);
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| keys(v, into)),
        _ => {}
    }
}

const PREFIX: &str = "fer-sensor/fer-test";

#[test]
fn discovery_retained_state_in_order_availability_last_will_and_recovery_after_a_broker_restart() {
    let Some(binary) = mosquitto() else { return };
    // The broker is down when the sensor starts and comes up 1.5 s later (the watcher, which
    // retries every 100 ms, gets in long before the sensor's second attempt, at 3 s).
    let mut broker = Broker::prepare(binary, "allow_anonymous true\n");
    let watcher = Subscriber::spawn(broker.port, "watcher", None);
    let config = "[publish.mqtt]\nclient_id = \"fer-test\"\nkeep_alive_s = 5\n";
    let sensor = Sensor::start(
        config,
        &[
            "--mqtt",
            &broker.url(),
            "--hold",
            "4",
            "--repeat",
            "0",
            "--status-interval",
            "1",
        ],
        &[],
    );
    std::thread::sleep(Duration::from_millis(1500));
    broker.restart();
    assert!(watcher.wait_subscribed(), "the watcher did not get in");
    let (state, availability, status) = (
        format!("{PREFIX}/state"),
        format!("{PREFIX}/availability"),
        format!("{PREFIX}/status"),
    );

    // A pass over the ten samples gives several changes; a status comes every second.
    assert!(
        wait_until(Duration::from_secs(60), || watcher.on(&state).len() >= 6
            && !watcher.on(&status).is_empty()),
        "states {} and statuses {} after 60 s; stderr:\n{}",
        watcher.on(&state).len(),
        watcher.on(&status).len(),
        sensor.stderr()
    );
    assert_eq!(watcher.on(&availability)[0].payload, "online");

    // Every state is the line stdout printed, in the same order, those queued while the broker
    // was down included.
    let states = watcher.on(&state);
    let lines = sensor.lines();
    assert!(lines.len() >= states.len());
    for (i, s) in states.iter().enumerate() {
        assert_eq!(s.payload, lines[i], "state {i} differs from stdout line {i}");
    }
    let sequences: Vec<u64> = states
        .iter()
        .map(|s| {
            serde_json::from_str::<serde_json::Value>(&s.payload).unwrap()["sequence"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        sequences.windows(2).all(|w| w[0] < w[1]),
        "states out of order: {sequences:?}"
    );

    // The diagnostic status carries the frame rate and the stage timings.
    let st: serde_json::Value = serde_json::from_str(&watcher.on(&status)[0].payload).unwrap();
    assert!(st["fps"].as_f64().unwrap() > 0.0 && st["stage_ms"]["detect"].as_f64().unwrap() > 0.0);
    assert_eq!(st["mqtt_dropped"], 0);

    // A newcomer (Home Assistant starting later) gets discovery, availability and state retained.
    let late = Subscriber::start(broker.port, "late", None);
    assert!(wait_until(Duration::from_secs(5), || late.seen().len() >= 5));
    let retained = late.seen();
    let config_of = |kind: &str, object: &str| {
        let topic = format!("homeassistant/{kind}/fer-test/{object}/config");
        let m = retained
            .iter()
            .find(|s| s.topic == topic)
            .unwrap_or_else(|| panic!("no {topic}"));
        assert!(m.retain, "{topic} is retained");
        serde_json::from_str::<serde_json::Value>(&m.payload).unwrap()
    };
    let expression = config_of("sensor", "expression");
    let face = config_of("binary_sensor", "face");
    let fps = config_of("sensor", "fps");
    for c in [&expression, &face, &fps] {
        for field in ["name", "unique_id", "state_topic", "availability_topic", "device"] {
            assert!(!c[field].is_null(), "discovery config lacks {field}: {c}");
        }
        assert_eq!(c["availability_topic"], availability.as_str());
        assert_eq!(c["device"], expression["device"], "one device for every entity");
    }
    assert_eq!(expression["state_topic"], state.as_str());
    assert_eq!(face["device_class"], "occupancy");
    assert_eq!(fps["entity_category"], "diagnostic");
    for topic in [&availability, &state] {
        assert!(
            retained.iter().any(|s| &s.topic == topic && s.retain),
            "{topic} retained"
        );
    }

    // Home Assistant restarts: it says `online` on its status topic, and the sensor announces
    // itself again. The birth message is retained (a Home Assistant option), which the broker
    // sends again with every subscription the announcement makes: once is enough.
    let mark = watcher.seen().len();
    let (ha, mut connection) = Client::new(MqttOptions::new("home-assistant", "127.0.0.1", broker.port), 4);
    ha.publish("homeassistant/status", QoS::AtLeastOnce, true, "online")
        .unwrap();
    let sent = (0..50).any(|_| {
        matches!(
            connection.recv_timeout(Duration::from_millis(100)),
            Ok(Ok(Event::Incoming(Packet::PubAck(_))))
        )
    });
    assert!(sent, "Home Assistant's birth message did not go out");
    assert!(
        watcher.wait_for(
            mark,
            "homeassistant/binary_sensor/fer-test/face/config",
            Duration::from_secs(5),
            |_| true
        ),
        "no new announcement after Home Assistant came online"
    );
    std::thread::sleep(Duration::from_secs(2));
    let announcements = watcher.seen()[mark..]
        .iter()
        .filter(|s| s.topic == "homeassistant/binary_sensor/fer-test/face/config")
        .count();
    assert_eq!(
        announcements, 1,
        "a retained `online` made the sensor announce itself again and again"
    );

    // Privacy: every payload is small JSON (or a bare availability word) with known keys only.
    let allowed: BTreeSet<&str> = [
        // state
        "sequence",
        "time_ms",
        "source",
        "reading",
        "confidence",
        "faces",
        "changed",
        "face",
        "x",
        "y",
        "width",
        "height",
        "score", // status
        "uptime_s",
        "fps",
        "frames",
        "stage_ms",
        "capture",
        "detect",
        "align",
        "classify",
        "publish",
        "mqtt_dropped",
        // discovery
        "name",
        "unique_id",
        "state_topic",
        "availability_topic",
        "payload_available",
        "payload_not_available",
        "device",
        "identifiers",
        "model",
        "sw_version",
        "origin",
        "value_template",
        "device_class",
        "options",
        "icon",
        "json_attributes_topic",
        "json_attributes_template",
        "unit_of_measurement",
        "state_class",
        "entity_category",
    ]
    .into();
    let mut found = BTreeSet::new();
    // (`homeassistant/status` is Home Assistant's own, sent above.)
    for s in watcher.seen().into_iter().filter(|s| s.topic != "homeassistant/status") {
        assert!(s.payload.len() < 2048, "{} carries {} bytes", s.topic, s.payload.len());
        if s.topic == availability {
            assert!(["online", "offline"].contains(&s.payload.as_str()));
        } else {
            keys(&serde_json::from_str(&s.payload).unwrap(), &mut found);
        }
    }
    let unknown: Vec<&String> = found.iter().filter(|k| !allowed.contains(k.as_str())).collect();
    assert!(unknown.is_empty(), "unexpected payload keys {unknown:?}");

    // The broker goes away and comes back (empty: no persistence): the sensor reconnects and
    // announces itself again, with its current state.
    broker.stop();
    std::thread::sleep(Duration::from_millis(1500));
    let mark = watcher.seen().len();
    broker.restart();
    let limit = Duration::from_secs(40);
    assert!(
        watcher.wait_for(mark, &availability, limit, |s| s.payload == "online")
            && watcher.wait_for(mark, &state, limit, |_| true)
            && watcher.wait_for(mark, "homeassistant/sensor/fer-test/expression/config", limit, |_| true),
        "no announcement after the broker restart; stderr:\n{}",
        sensor.stderr()
    );
    let log = sensor.stderr();
    assert!(
        log.contains("retrying in") && log.matches("mqtt: connected").count() >= 2,
        "{log}"
    );
    assert!(!sensor.lines().is_empty(), "stdout kept publishing");

    // SIGKILL: the sensor says nothing; the broker publishes its Last Will.
    let mark = watcher.seen().len();
    sensor.signal("-KILL");
    assert!(
        watcher.wait_for(mark, &availability, Duration::from_secs(10), |s| s.payload == "offline"),
        "no offline Last Will after SIGKILL"
    );
}

#[test]
fn wrong_credentials_keep_the_sensor_sensing_right_ones_publish_and_sigterm_says_offline() {
    let Some(binary) = mosquitto() else { return };
    let secret = "s3cret-pw";
    // Mosquitto's password file format: user:$7$… (mosquitto_passwd); written with its tool.
    let mut broker = Broker::prepare(binary, "allow_anonymous false\npassword_file {dir}/passwords\n");
    let passwd = broker.binary.with_file_name("mosquitto_passwd");
    let passwd = if passwd.exists() {
        passwd
    } else {
        PathBuf::from("/usr/bin/mosquitto_passwd")
    };
    let ok = Command::new(&passwd)
        .args(["-b", "-c"])
        .arg(broker.path("passwords"))
        .args(["fer", secret])
        .status()
        .expect("mosquitto_passwd")
        .success();
    assert!(ok, "mosquitto_passwd failed");
    broker.restart();
    let watcher = Subscriber::start(broker.port, "watcher", Some(("fer", secret)));
    let availability = format!("{PREFIX}/availability");

    // Wrong password: refused, retried with back-off, never logged; stdout carries on.
    let config =
        "[publish.mqtt]\nclient_id = \"fer-test\"\nusername = \"fer\"\npassword_env = \"FER_TEST_MQTT_PASSWORD\"\n";
    let mut wrong = Sensor::start(
        config,
        &["--mqtt", &broker.url(), "--hold", "30"],
        &[("FER_TEST_MQTT_PASSWORD", "not-the-password")],
    );
    assert!(wrong.wait(Duration::from_secs(120)).success(), "{}", wrong.stderr());
    let log = wrong.stderr();
    assert!(
        log.contains("Connection refused") && log.contains("retrying in"),
        "{log}"
    );
    assert!(!log.contains("not-the-password"), "the password reached the log");
    assert!(wrong.lines().len() >= 5, "stdout published while MQTT was refused");
    assert!(
        watcher.on(&availability).is_empty(),
        "a refused sensor announced itself"
    );

    // Right password from a file: online, state, then offline on SIGTERM (not the Last Will).
    let file = broker.path("sensor-password");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let config = format!(
        "[publish.mqtt]\nclient_id = \"fer-test\"\nusername = \"fer\"\npassword_file = \"{}\"\n",
        file.display()
    );
    let mut right = Sensor::start(&config, &["--mqtt", &broker.url(), "--hold", "4", "--repeat", "0"], &[]);
    assert!(
        watcher.wait_for(0, &format!("{PREFIX}/state"), Duration::from_secs(60), |_| true),
        "no state with the right password; stderr:\n{}",
        right.stderr()
    );
    assert_eq!(watcher.on(&availability)[0].payload, "online");
    right.signal("-TERM");
    assert!(right.wait(Duration::from_secs(5)).success());
    assert!(
        watcher.wait_for(1, &availability, Duration::from_secs(5), |s| s.payload == "offline"),
        "no offline after SIGTERM"
    );
    // A clean stop disconnects cleanly: the broker must not fire the Last Will as well.
    std::thread::sleep(Duration::from_secs(2));
    // Live deliveries only: a resubscribing watcher is sent the retained `offline` again.
    let seen = watcher.on(&availability);
    let offline = seen.iter().filter(|s| s.payload == "offline" && !s.retain).count();
    assert_eq!(
        offline,
        1,
        "the Last Will fired on a clean stop: {seen:?}; stderr:\n{}",
        right.stderr()
    );
    assert!(!right.stderr().contains(secret));
}

#[test]
fn two_sensors_sharing_a_client_id_back_off_ever_longer_and_say_why() {
    let Some(binary) = mosquitto() else { return };
    let mut broker = Broker::prepare(binary, "allow_anonymous true\n");
    broker.restart();
    // The same client id twice: the broker throws the older session off at each connect.
    let config = "[publish.mqtt]\nclient_id = \"raspberrypi\"\n";
    let args = ["--mqtt", &broker.url(), "--hold", "10", "--repeat", "0", "--quiet"];
    let mut first = Sensor::start(config, &args, &[]);
    let mut second = Sensor::start(config, &args, &[]);
    std::thread::sleep(Duration::from_secs(12));
    first.signal("-TERM");
    second.signal("-TERM");
    first.wait(Duration::from_secs(5));
    second.wait(Duration::from_secs(5));
    for sensor in [&first, &second] {
        let log = sensor.stderr();
        // With the wait forgiven at every connect, 12 s hold about twelve retries; growing
        // waits of 1, 2, 4 and 8 s hold four.
        let retries = log.matches("retrying in").count();
        assert!((1..=5).contains(&retries), "{retries} retries in 12 s:\n{log}");
        assert!(
            !log.contains("retrying in 1s") || log.matches("retrying in 1s").count() == 1,
            "{log}"
        );
    }
    let both = first.stderr() + &second.stderr();
    assert!(
        both.contains("is another client connected with our id \"raspberrypi\""),
        "no hint at the likely cause:\n{both}"
    );
}

/// A certificate authority and a server certificate for localhost/127.0.0.1 signed by it, as PEM:
/// (CA certificate, server certificate, server key).
fn tls_material() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "fer-sensor test CA");
    let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    server.distinguished_name.push(DnType::CommonName, "localhost");
    let cert = server.signed_by(&key, &issuer).unwrap();
    (ca_pem, cert.pem(), key.serialize_pem())
}

#[test]
fn tls_with_the_right_authority_publishes_and_a_stranger_certificate_is_refused_while_sensing_goes_on() {
    let Some(binary) = mosquitto() else { return };
    let tls_port = free_port();
    let mut broker = Broker::prepare(
        binary,
        &format!(
            "allow_anonymous true\nlistener {tls_port} 127.0.0.1\ncafile {{dir}}/ca.pem\n\
             certfile {{dir}}/server.pem\nkeyfile {{dir}}/server.key\n"
        ),
    );
    let (ca, cert, key) = tls_material();
    let (stranger, _, _) = tls_material();
    for (name, text) in [
        ("ca.pem", &ca),
        ("server.pem", &cert),
        ("server.key", &key),
        ("stranger.pem", &stranger),
    ] {
        std::fs::write(broker.path(name), text).unwrap();
    }
    broker.restart();
    assert!(wait_until(Duration::from_secs(5), || TcpStream::connect((
        "127.0.0.1",
        tls_port
    ))
    .is_ok()));
    let watcher = Subscriber::start(broker.port, "watcher", None);
    let url = format!("mqtts://localhost:{tls_port}");
    let config_with = |ca: &str| {
        format!(
            "[publish.mqtt]\nclient_id = \"fer-test\"\nca_file = \"{}\"\n",
            broker.path(ca).display()
        )
    };

    // A broker certificate from an authority we do not trust: refused, sensing goes on.
    let mut refused = Sensor::start(&config_with("stranger.pem"), &["--mqtt", &url, "--hold", "30"], &[]);
    assert!(refused.wait(Duration::from_secs(120)).success(), "{}", refused.stderr());
    let log = refused.stderr();
    assert!(log.contains("TLS") && log.contains("retrying in"), "{log}");
    assert!(refused.lines().len() >= 5, "stdout published while TLS failed");
    assert!(watcher.seen().is_empty(), "nothing reached the broker");

    // The right authority: the state arrives over TLS.
    let _right = Sensor::start(
        &config_with("ca.pem"),
        &["--mqtt", &url, "--hold", "4", "--repeat", "0"],
        &[],
    );
    assert!(
        watcher.wait_for(0, &format!("{PREFIX}/state"), Duration::from_secs(60), |_| true),
        "no state over TLS; stderr:\n{}",
        _right.stderr()
    );
}
