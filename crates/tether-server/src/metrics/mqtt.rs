//! The MQTT listener's metrics (`tether_mqtt_*`, `docs/mqtt.md` section 12), counted by the
//! wire (`crate::transport::mqtt`) as packets cross it.
//!
//! Hot path: a packet in or out is one atomic add on a handle resolved once, by packet type,
//! with no allocation and no registry lookup. Refusals (a reason code of 0x80 or above, a
//! 3.1.1 CONNACK refusal, a close without a word) are rare, and counted with their labels.

use std::sync::OnceLock;

use metrics::{Counter, counter};
use tether_mqtt::{PacketType, Version};

/// The handles of the MQTT metrics, resolved once (see [`mqtt`]).
#[derive(Debug)]
pub struct MqttMetrics {
    /// By packet type (its 4-bit value; 0 unused).
    packets_in: [Counter; 16],
    packets_out: [Counter; 16],
    /// Accepted (CONNACK 0x00), by version: 3.1.1, 5.0.
    connections: [Counter; 2],
    unknown_acks: Counter,
    too_large: Counter,
    recoveries: Counter,
}

/// The MQTT metrics, their handles resolved at first use, once the recorder is installed.
pub fn mqtt() -> &'static MqttMetrics {
    static METRICS: OnceLock<MqttMetrics> = OnceLock::new();
    METRICS.get_or_init(|| {
        super::prometheus();
        MqttMetrics::new()
    })
}

/// The label of packet type `bits` (its 4-bit value).
fn type_label(bits: u8) -> &'static str {
    PacketType::from_u8(bits).map_or("reserved", PacketType::name)
}

impl MqttMetrics {
    fn new() -> Self {
        MqttMetrics {
            packets_in: std::array::from_fn(
                |i| counter!("tether_mqtt_packets_in_total", "type" => type_label(i as u8)),
            ),
            packets_out: std::array::from_fn(
                |i| counter!("tether_mqtt_packets_out_total", "type" => type_label(i as u8)),
            ),
            connections: [
                counter!("tether_mqtt_connections_total", "version" => "3.1.1"),
                counter!("tether_mqtt_connections_total", "version" => "5.0"),
            ],
            unknown_acks: counter!("tether_mqtt_unknown_acks_total"),
            too_large: counter!("tether_mqtt_too_large_skipped_total"),
            recoveries: counter!("tether_mqtt_topic_recoveries_total"),
        }
    }

    /// A packet the device sent, decoded.
    pub fn packet_in(&self, packet: PacketType) {
        self.packets_in[usize::from(packet as u8 & 0x0F)].increment(1);
    }

    /// PUBACKs for no PUBLISH in flight (a duplicate, or one of a previous connection).
    pub fn unknown_acks(&self, n: u64) {
        if n > 0 {
            self.unknown_acks.increment(n);
        }
    }

    /// A PUBLISH not sent: larger than the device's Maximum Packet Size (`docs/mqtt.md` 4.5).
    pub fn too_large_skipped(&self) {
        self.too_large.increment(1);
    }

    /// A QoS 1 topic's publications fetched again from its history: the window was full
    /// (`docs/mqtt.md`, section 5).
    pub fn topic_recovery(&self) {
        self.recoveries.increment(1);
    }

    /// The connection closes without a packet that says why (3.1.1 has no DISCONNECT from
    /// the server, and no CONNACK code for a malformed CONNECT): counted as a refusal of
    /// `close` with the MQTT 5 reason code the failure has.
    pub fn closed(&self, reason: u8) {
        refused("close", reason);
    }

    /// The packets the server wrote, whole, in `out`, for a device of `version`: each counted
    /// by type; accepted connections by version; refusals (CONNACK, SUBACK, PUBACK, PUBCOMP,
    /// DISCONNECT with a code of 0x80 or above, or a 3.1.1 CONNACK refusal) by packet and
    /// code. Bytes that are not whole packets are left uncounted.
    pub fn packets_out(&self, mut out: &[u8], version: Option<Version>) {
        while let Some((first, body, rest)) = split(out) {
            out = rest;
            let bits = first >> 4;
            self.packets_out[usize::from(bits)].increment(1);
            let v5 = version == Some(Version::V5);
            match PacketType::from_u8(bits) {
                Some(PacketType::ConnAck) => match body.get(1) {
                    Some(0) => {
                        let i = usize::from(v5);
                        self.connections[i].increment(1);
                    }
                    // 3.1.1's refusals are 0x01 to 0x05.
                    Some(&code) => refused("CONNACK", code),
                    None => {}
                },
                Some(PacketType::SubAck) => {
                    // The packet id, then (5.0) the properties, then a code per filter.
                    let codes = body
                        .get(2..)
                        .and_then(|b| if v5 { skip_props(b) } else { Some(b) });
                    for &code in codes.unwrap_or_default() {
                        if code >= 0x80 {
                            refused("SUBACK", code);
                        }
                    }
                }
                Some(PacketType::PubAck | PacketType::PubComp) => {
                    if let Some(&code) = body.get(2).filter(|c| **c >= 0x80) {
                        refused(type_label(bits), code);
                    }
                }
                Some(PacketType::Disconnect) => {
                    if let Some(&code) = body.first().filter(|c| **c >= 0x80) {
                        refused("DISCONNECT", code);
                    }
                }
                _ => {}
            }
        }
    }
}

/// A refusal: `packet` carried reason `code`.
fn refused(packet: &'static str, code: u8) {
    counter!("tether_mqtt_refused_total", "packet" => packet, "code" => format!("0x{code:02X}"))
        .increment(1);
}

/// The first whole packet of `bytes`: its first byte, its body and what follows it.
fn split(bytes: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&first, after) = bytes.split_first()?;
    let (len, n) = tether_mqtt::wire::read_vbi(after).ok()??;
    let body = after.get(n..n + len as usize)?;
    Some((first, body, &after[n + len as usize..]))
}

/// What follows MQTT 5 properties at the front of `bytes` (their length, then themselves).
fn skip_props(bytes: &[u8]) -> Option<&[u8]> {
    let (len, n) = tether_mqtt::wire::read_vbi(bytes).ok()??;
    bytes.get(n + len as usize..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_packets_are_split_and_a_part_is_left() {
        let bytes = [0x20, 0x02, 0x00, 0x00, 0x90, 0x03, 0x00, 0x01, 0x80, 0xD0];
        let (first, body, rest) = split(&bytes).unwrap();
        assert_eq!((first, body), (0x20, &[0, 0][..]));
        let (first, body, rest) = split(rest).unwrap();
        assert_eq!((first, body), (0x90, &[0, 1, 0x80][..]));
        assert_eq!(split(rest), None, "a PINGRESP without its length");
    }

    #[test]
    fn properties_are_skipped() {
        assert_eq!(skip_props(&[0x00, 0x80]), Some(&[0x80][..]));
        assert_eq!(
            skip_props(&[0x03, 0x1F, 0x00, 0x00, 0xA2]),
            Some(&[0xA2][..])
        );
        assert_eq!(skip_props(&[0x05, 0x1F]), None);
    }
}
