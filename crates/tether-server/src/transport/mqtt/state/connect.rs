//! CONNECT to the session's `connect` and its answer back to CONNACK; refusals, and the
//! DISCONNECTs the server sends (docs/mqtt.md, sections 2, 3 and 11).

use super::*;

impl State {
    pub(super) fn on_connect(
        &mut self,
        c: mqtt::Connect,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
    ) -> Result<Flow, Fail> {
        self.version = Some(c.version);
        self.clean_start = c.clean_start;
        let props = &c.properties;
        self.problem_info = props
            .find(|p| match p {
                Property::RequestProblemInformation(v) => Some(*v),
                _ => None,
            })
            .is_none_or(|v| v == 1);
        self.session_expiry = props
            .find(|p| match p {
                Property::SessionExpiryInterval(s) => Some(*s),
                _ => None,
            })
            .unwrap_or(0);
        self.receive_max = props
            .find(|p| match p {
                Property::ReceiveMaximum(r) => Some(*r),
                _ => None,
            })
            // The node's own limit applies once the connection is accepted
            // (`State::limit_inflight`).
            .unwrap_or(u16::MAX);
        self.max_packet = props
            .find(|p| match p {
                Property::MaximumPacketSize(m) => Some(*m),
                _ => None,
            })
            .unwrap_or(u32::MAX);
        let mut refuse = |state: &mut State, reason: ReasonCode, v311: Option<u8>, detail| {
            state.connack_refusal(reason, v311, detail, out);
            Err(Fail::new(Code::BAD_BINDINGS, reason, detail))
        };
        if props
            .iter()
            .any(|p| matches!(p, Property::AuthenticationMethod(_)))
        {
            return refuse(
                self,
                ReasonCode::BAD_AUTHENTICATION_METHOD,
                None,
                "enhanced authentication is not taken: the password is the token",
            );
        }
        if c.version == Version::V5
            && let Some(will) = &c.will
        {
            if will.qos == QoS::ExactlyOnce {
                return refuse(self, ReasonCode::QOS_NOT_SUPPORTED, None, "a Will of QoS 2");
            }
            if will.retain {
                return refuse(
                    self,
                    ReasonCode::RETAIN_NOT_SUPPORTED,
                    None,
                    "a retained Will",
                );
            }
            let delayed = will
                .properties
                .iter()
                .any(|p| matches!(p, Property::WillDelayInterval(d) if *d > 0));
            if delayed {
                return refuse(
                    self,
                    ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                    None,
                    "a Will Delay Interval is not supported",
                );
            }
        }
        let device = if c.client_id.is_empty() {
            if !c.clean_start {
                return refuse(
                    self,
                    ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                    Some(v311::IDENTIFIER_REJECTED),
                    "an empty client identifier needs a clean session",
                );
            }
            let id = format!("mqtt-{:016x}", rand::random::<u64>());
            self.assigned = Some(id.clone());
            id
        } else {
            c.client_id
        };
        // The user name lists the apps, the password their tokens, in the same order.
        let username = c.username.unwrap_or_default();
        let password = c
            .password
            .map(|p| String::from_utf8_lossy(&p).into_owned())
            .unwrap_or_default();
        let apps: Vec<&str> = match username.is_empty() {
            true => Vec::new(),
            false => username.split(',').collect(),
        };
        if let Some(will) = &c.will
            && self.read_will(will, &apps).is_err()
        {
            if c.version == Version::V5 {
                return refuse(
                    self,
                    ReasonCode::TOPIC_NAME_INVALID,
                    None,
                    "the Will Topic names no upstream (docs/mqtt.md, section 6)",
                );
            }
            tracing::debug!("mqtt: a will whose topic names no upstream is dropped");
        }
        let mut tokens = password.split(',');
        let last_seqs: Vec<(String, u64)> = props
            .user()
            .filter(|(k, _)| *k == "last_seq")
            .filter_map(|(_, v)| {
                let (app, seq) = v.rsplit_once(':')?;
                Some((app.to_string(), seq.parse().ok()?))
            })
            .collect();
        let bindings = apps
            .iter()
            .map(|app| proto::Binding {
                app: app.to_string(),
                token: tokens.next().unwrap_or_default().to_string(),
                last_seq: last_seqs.iter().find(|(a, _)| a == app).map(|(_, s)| *s),
            })
            .collect();
        self.apps = apps
            .iter()
            .map(|app| AppInbox::new((*app).into()))
            .collect();
        // The session closes after `heartbeat_missed` (3) silent heartbeats: a heartbeat of
        // half the keep alive closes after one and a half keep alives, as MQTT says.
        let heartbeat_ms = match c.keep_alive {
            0 => 60_000,
            k => u32::from(k) * 500,
        };
        frames.push_back(Frame::new(
            self.req(),
            proto::Connect {
                version: proto::PROTOCOL_VERSION,
                device,
                heartbeat_ms,
                bindings,
            },
        ));
        Ok(Flow::Go)
    }

    /// A CONNACK that refuses, unless 3.1.1 has no code for it (then the connection just
    /// closes, [MQTT-3.1.4-1]).
    pub(in crate::transport::mqtt) fn connack_refusal(
        &mut self,
        reason: ReasonCode,
        v311: Option<u8>,
        detail: &str,
        out: &mut BytesMut,
    ) {
        if self.closing {
            return;
        }
        self.closing = true;
        let version = v(self);
        let code = match version {
            Version::V5 => reason.0,
            Version::V311 => match v311 {
                Some(code) => code,
                None => return,
            },
        };
        let mut properties = Properties::new();
        if version == Version::V5 && self.problem_info && !detail.is_empty() {
            properties.push(Property::ReasonString(detail.to_string()));
        }
        let ack = mqtt::ConnAck {
            session_present: false,
            code,
            properties,
        };
        put(version, &Packet::ConnAck(ack), out);
    }

    /// What the device is told when the wire closes the connection for `fail`.
    pub fn failed(&mut self, fail: &Fail, out: &mut BytesMut) {
        if !self.connected {
            self.connack_refusal(fail.reason, None, fail.detail, out);
        } else {
            self.disconnect(fail.reason, fail.detail, out);
        }
    }

    /// A DISCONNECT (MQTT 5 only: 3.1.1 has none from the server).
    fn disconnect(&mut self, reason: ReasonCode, detail: &str, out: &mut BytesMut) {
        if self.closing {
            return;
        }
        self.closing = true;
        if v(self) != Version::V5 {
            return;
        }
        let mut d = mqtt::Disconnect::new(reason);
        if !detail.is_empty() {
            d.properties
                .push(Property::ReasonString(detail.to_string()));
        }
        put(Version::V5, &Packet::Disconnect(d), out);
    }

    pub(super) fn on_connected(
        &mut self,
        c: proto::Connected,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
    ) {
        self.connected = true;
        let version = v(self);
        let mut props = Properties::new();
        if version == Version::V5 {
            if self.expiry_lowered {
                props.push(Property::SessionExpiryInterval(self.session_expiry));
            }
            if let Some(id) = &self.assigned {
                props.push(Property::AssignedClientIdentifier(id.clone()));
            }
            let keep_alive = (c.heartbeat_ms / 500).min(u32::from(u16::MAX)) as u16;
            props.push(Property::ServerKeepAlive(keep_alive));
            props.push(Property::ReceiveMaximum(MAX_UPSTREAMS));
            props.push(Property::MaximumPacketSize(c.max_frame));
            props.push(Property::MaximumQos(1));
            props.push(Property::RetainAvailable(0));
            props.push(Property::WildcardSubscriptionAvailable(0));
            props.push(Property::SubscriptionIdentifierAvailable(0));
            props.push(Property::SharedSubscriptionAvailable(0));
            for b in &c.bindings {
                props.push(Property::UserProperty(
                    "user".into(),
                    format!("{}:{}", b.app, b.user),
                ));
            }
            props.push(Property::UserProperty("node".into(), c.node.clone()));
            props.push(Property::UserProperty(
                "conn_id".into(),
                c.conn_id.to_string(),
            ));
        }
        let ack = mqtt::ConnAck {
            session_present: self.session_present(),
            code: 0,
            properties: props,
        };
        put(version, &Packet::ConnAck(ack), out);
        self.restore(frames);
    }

    /// The device's DISCONNECT: its goodbye, unless its reason asks for the will (0x04); an
    /// MQTT 5 Session Expiry Interval on it replaces the CONNECT's (within the cap).
    pub(super) fn on_goodbye(&mut self, d: mqtt::Disconnect) -> Result<Flow, Fail> {
        let expiry = d.properties.find(|p| match p {
            Property::SessionExpiryInterval(s) => Some(*s),
            _ => None,
        });
        if let Some(expiry) = expiry {
            if self.session_expiry == 0 && !self.expiry_lowered && expiry > 0 {
                return Err(Fail::protocol(
                    "a Session Expiry Interval above 0 at DISCONNECT after 0 at CONNECT",
                ));
            }
            self.set_session_expiry(expiry);
        }
        if d.reason != ReasonCode::DISCONNECT_WITH_WILL_MESSAGE {
            self.will = None;
        }
        Ok(Flow::Gone)
    }

    pub(super) fn on_disconnect(&mut self, d: proto::Disconnect, out: &mut BytesMut) {
        if self.version.is_none() {
            // No CONNECT was read (a timeout, a first packet that was none): no CONNACK can
            // be written in a version the client reads.
            self.closing = true;
            return;
        }
        if !self.connected {
            let (reason, v311) = connack_code(d.code);
            self.connack_refusal(reason, v311, &d.reason, out);
        } else {
            self.disconnect(disconnect_code(d.code), &d.reason, out);
        }
    }
}

/// The CONNACK codes (5.0, 3.1.1) of a handshake refusal (docs/mqtt.md, section 3).
fn connack_code(code: Code) -> (ReasonCode, Option<u8>) {
    let unavailable = Some(v311::SERVER_UNAVAILABLE);
    let bad = Some(v311::BAD_USER_NAME_OR_PASSWORD);
    match code {
        Code::UNSUPPORTED_VERSION => (
            ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            Some(v311::UNACCEPTABLE_PROTOCOL_VERSION),
        ),
        Code::PROTOCOL => (
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            Some(v311::IDENTIFIER_REJECTED),
        ),
        Code::BAD_BINDINGS | Code::UNKNOWN_APP | Code::BAD_TOKEN | Code::TOKEN_EXPIRED => {
            (ReasonCode::BAD_USER_NAME_OR_PASSWORD, bad)
        }
        Code::IP_LIMIT => (ReasonCode::CONNECTION_RATE_EXCEEDED, unavailable),
        Code::CONNECTION_LIMIT => (ReasonCode::SERVER_BUSY, unavailable),
        Code::DRAIN => (ReasonCode::USE_ANOTHER_SERVER, unavailable),
        Code::SHUTDOWN => (ReasonCode::SERVER_UNAVAILABLE, unavailable),
        Code::FRAME_TOO_LARGE => (ReasonCode::PACKET_TOO_LARGE, None),
        Code::HANDSHAKE_TIMEOUT | Code::EXPECTED_CONNECT => (ReasonCode::PROTOCOL_ERROR, None),
        _ => (ReasonCode::UNSPECIFIED_ERROR, unavailable),
    }
}

/// The DISCONNECT reason (5.0) of a close the server makes (docs/mqtt.md, section 11).
fn disconnect_code(code: Code) -> ReasonCode {
    match code {
        Code::KICKED => ReasonCode::ADMINISTRATIVE_ACTION,
        Code::TAKEN_OVER => ReasonCode::SESSION_TAKEN_OVER,
        Code::APP_REMOVED => ReasonCode::NOT_AUTHORIZED,
        Code::TOKEN_EXPIRED => ReasonCode::MAXIMUM_CONNECT_TIME,
        Code::DRAIN => ReasonCode::USE_ANOTHER_SERVER,
        Code::SHUTDOWN => ReasonCode::SERVER_SHUTTING_DOWN,
        Code::SLOW => ReasonCode::QUOTA_EXCEEDED,
        Code::HEARTBEAT_TIMEOUT => ReasonCode::KEEP_ALIVE_TIMEOUT,
        Code::PROTOCOL | Code::UNKNOWN_OP | Code::EXPECTED_CONNECT => ReasonCode::PROTOCOL_ERROR,
        Code::FRAME_TOO_LARGE => ReasonCode::PACKET_TOO_LARGE,
        _ => ReasonCode::UNSPECIFIED_ERROR,
    }
}
