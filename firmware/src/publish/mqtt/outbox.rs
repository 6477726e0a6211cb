//! What waits for the broker while it is away.

use std::collections::VecDeque;

use rumqttc::{Client, QoS};
use tracing::warn;

/// One queued message.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Message {
    pub(super) topic: String,
    pub(super) payload: String,
    pub(super) retain: bool,
}

/// What waits for the broker: a bounded queue that drops its oldest, and the last state sent.
#[derive(Debug)]
pub(super) struct Outbox {
    pub(super) queue: VecDeque<Message>,
    pub(super) capacity: usize,
    pub(super) dropped: u64,
    /// Drops since the last connect, for one warning per outage.
    pub(super) dropped_while_away: u64,
    pub(super) latest_state: Option<String>,
}

impl Outbox {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            queue: VecDeque::new(),
            capacity,
            dropped: 0,
            dropped_while_away: 0,
            latest_state: None,
        }
    }

    pub(super) fn push(&mut self, message: Message) {
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
    pub(super) fn flush(&mut self, client: &Client, qos: QoS) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
