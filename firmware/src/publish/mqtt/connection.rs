//! The connection thread and the state it shares with the frame loop.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rumqttc::{Client, Connection, Event as MqttEvent, Outgoing, Packet, QoS};
use tracing::{info, warn};

use super::discovery::Topics;
use super::outbox::{Message, Outbox};
use crate::Stop;
use crate::backoff::Backoff;

/// State shared by the frame loop and the connection thread.
pub(super) struct Shared {
    pub(super) outbox: Mutex<Outbox>,
    pub(super) connected: AtomicBool,
    pub(super) stop: Stop,
    pub(super) topics: Topics,
    pub(super) qos: QoS,
    pub(super) client_id: String,
}

impl Shared {
    pub(super) fn outbox(&self) -> MutexGuard<'_, Outbox> {
        // A panic elsewhere while holding the lock leaves a queue that is still a valid queue.
        self.outbox.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(super) fn connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// After a connect, or when Home Assistant comes online: (re)send the discovery configs and
    /// `online`, then what is queued, and the current state unless a queued one carries it.
    pub(super) fn announce(&self, client: &Client) {
        let mut out = self.outbox();
        let t = &self.topics;
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

/// A session closed this soon after the broker accepted it was thrown off, not lost: another
/// client took its id, or the broker refused what it did. A broker that shuts down or a network
/// that goes closes a session that had been up for longer.
const THROWN_OFF: Duration = Duration::from_secs(3);

/// How long the thread reads after its disconnect, waiting for the broker to close the socket.
pub(super) const LINGER: Duration = Duration::from_millis(500);

/// The first wait before reconnecting to a broker that failed; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// The longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The connection thread: drives rumqttc's event loop, announces on every connect, flushes the
/// queue as the client takes it, and backs off after failures (one log line per attempt; the
/// wait starts over only after a connection that lasted, see [`Backoff`]). It ends when the
/// broker has closed the socket after our disconnect, so a clean stop is seen as one.
pub(super) fn drive(
    mut connection: Connection,
    client: Client,
    shared: Arc<Shared>,
    broker: String,
    done: SyncSender<()>,
) {
    let mut backoff = Backoff::new(FIRST_BACKOFF, MAX_BACKOFF);
    let mut connected_at = None;
    // Set once the disconnect is on the wire: from then on the loop only reads, until the broker
    // closes the socket or this passes.
    let mut leave_by: Option<Instant> = None;
    loop {
        let event = match leave_by {
            None => connection.recv().map_err(|_| ()),
            Some(by) => match by.checked_duration_since(Instant::now()) {
                Some(left) => connection.recv_timeout(left).map_err(|_| ()),
                None => break,
            },
        };
        match event {
            // Every client handle is gone, or the broker kept the socket open past `leave_by`.
            Err(()) => break,
            // Closing our end now could reset the connection under the disconnect (unread
            // acknowledgements turn a close into a reset, and the broker then fires the Last
            // Will): read until the broker, having taken the disconnect, closes its end.
            Ok(Ok(MqttEvent::Outgoing(Outgoing::Disconnect))) => leave_by = Some(Instant::now() + LINGER),
            // Once stopping, nothing more is said: an announcement (a reconnect, Home Assistant
            // coming back) would put a retained `online` after our `offline`, and a refill of the
            // channel could leave no room for the disconnect.
            Ok(Ok(_)) if shared.stop.requested() => {}
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
                // Home Assistant's restarts, listened for once a session, not at every
                // announcement: each subscription brings a retained birth message back.
                if let Some(ha) = &shared.topics.ha_status {
                    let _ = client.try_subscribe(ha.as_str(), QoS::AtLeastOnce);
                }
                shared.announce(&client);
            }
            // Only a live `online`: a retained one arrives with the subscription, right after the
            // announcement a connect makes.
            Ok(Ok(MqttEvent::Incoming(Packet::Publish(p))))
                if shared.topics.ha_status.as_deref() == Some(p.topic.as_str())
                    && &p.payload[..] == b"online"
                    && !p.retain =>
            {
                info!("mqtt: Home Assistant is online; announcing again");
                shared.announce(&client);
            }
            Ok(Ok(_)) => shared.outbox().flush(&client, shared.qos),
            Ok(Err(e)) => {
                shared.connected.store(false, Ordering::SeqCst);
                if shared.stop.requested() {
                    break;
                }
                let hint = match connected_at.take() {
                    Some(at) if at.elapsed() < THROWN_OFF => format!(
                        " {:.0} s after the broker accepted us: is another client connected with our id {:?} \
                         (two boards left with one host name and client_id)? \
                         Or does the broker's ACL refuse our topics?",
                        at.elapsed().as_secs_f32(),
                        shared.client_id
                    ),
                    _ => String::new(),
                };
                let wait = backoff.failed();
                warn!("mqtt {broker}: {e}{hint}; other outputs carry on, retrying in {wait:?}");
                if shared.stop.sleep(wait) {
                    break;
                }
            }
        }
    }
    let _ = done.send(());
}
