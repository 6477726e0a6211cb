//! The topics of one sensor and its Home Assistant discovery configs.

use fer_protocol::Reading;
use serde_json::json;

use super::options::{MqttOptions, node_id};

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
                        "options": Reading::ALL.map(Reading::name),
                        "icon": "mdi:emoticon-outline",
                        "json_attributes_topic": state,
                        "json_attributes_template":
                            concat!(
                                "{{ {'confidence': value_json.confidence, 'faces': value_json.faces, ",
                                "'face': value_json.face} | tojson }}",
                            ),
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
