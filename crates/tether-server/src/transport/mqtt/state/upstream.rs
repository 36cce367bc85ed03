//! A device's PUBLISH into `upstream` (or `refresh`), the webhook's outcome back as PUBACK
//! and a reply PUBLISH, and the session's errors for them (docs/mqtt.md, sections 7 and 8).

use super::*;

impl State {
    pub(super) fn on_publish(
        &mut self,
        p: mqtt::Publish,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
    ) -> Result<Flow, Fail> {
        let version = v(self);
        if p.qos == QoS::ExactlyOnce {
            return Err(Fail::new(
                Code::PROTOCOL,
                ReasonCode::QOS_NOT_SUPPORTED,
                "QoS 2 is not supported (Maximum QoS 1)",
            ));
        }
        if p.retain && version == Version::V5 {
            return Err(Fail::new(
                Code::PROTOCOL,
                ReasonCode::RETAIN_NOT_SUPPORTED,
                "retained messages are not supported",
            ));
        }
        if p.properties
            .iter()
            .any(|p| matches!(p, Property::TopicAlias(_)))
        {
            return Err(Fail::new(
                Code::PROTOCOL,
                ReasonCode::TOPIC_ALIAS_INVALID,
                "topic aliases are not supported (Topic Alias Maximum 0)",
            ));
        }
        let qos1 = p.qos == QoS::AtLeastOnce;
        let invalid = |out: &mut BytesMut| {
            if qos1 {
                let mut ack = mqtt::Ack::new(p.packet_id);
                ack.reason = ReasonCode::TOPIC_NAME_INVALID;
                put(version, &Packet::PubAck(ack), out);
            }
            Ok(Flow::Go)
        };
        if let Some(app) = p.topic.strip_prefix("$tether/refresh/") {
            let Some(app) = self.app_index(app) else {
                return invalid(out);
            };
            let req = self.req();
            self.pending_mut().reqs.push((req, Req::Refresh { app }));
            let token = String::from_utf8_lossy(&p.payload).trim().to_string();
            frames.push_back(Frame::new(
                req,
                proto::Refresh {
                    app: self.apps[usize::from(app)].app.to_string(),
                    token,
                },
            ));
            if qos1 {
                put(version, &Packet::PubAck(mqtt::Ack::new(p.packet_id)), out);
            }
            return Ok(Flow::Go);
        }
        let (app, kind) = match p.topic.strip_prefix("$tether/upstream/") {
            Some(rest) => match rest.split_once('/') {
                Some((app, kind)) => match self.app_index(app) {
                    Some(i) => (i, kind.to_string()),
                    None => return invalid(out),
                },
                None => return invalid(out),
            },
            None if p.topic.starts_with('$') => return invalid(out),
            None => (0, p.topic.clone()),
        };
        if validate_id("kind", &kind).is_err() {
            return invalid(out);
        }
        let response = p.properties.find(|q| match q {
            Property::ResponseTopic(t) => Some(t.clone()),
            _ => None,
        });
        let correlation = p.properties.find(|q| match q {
            Property::CorrelationData(d) => Some(d.clone()),
            _ => None,
        });
        let payload_kind = match serde_json::from_slice::<serde::de::IgnoredAny>(&p.payload) {
            Ok(_) => PayloadKind::Json,
            Err(_) => PayloadKind::Binary,
        };
        let req = self.req();
        let reply_sub = self
            .reply_subs
            .iter()
            .any(|s| *s == format!("$tether/reply/{}/{kind}", self.apps[usize::from(app)].app));
        let tracked = qos1 || response.is_some() || reply_sub;
        if tracked {
            if self.pending().ups.len() >= usize::from(MAX_UPSTREAMS) {
                if qos1 {
                    return Err(Fail::new(
                        Code::PROTOCOL,
                        ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                        "more QoS 1 PUBLISHes in flight than the Receive Maximum",
                    ));
                }
            } else {
                self.pending_mut().ups.push_back(Up {
                    req,
                    packet_id: if qos1 { p.packet_id } else { 0 },
                    app,
                    kind: kind.clone(),
                    response: response.map(|t| (t, correlation)),
                    done: None,
                });
            }
        }
        frames.push_back(Frame::new(
            req,
            proto::Upstream {
                app: self.apps[usize::from(app)].app.to_string(),
                kind,
                payload_kind,
                payload: p.payload,
            },
        ));
        Ok(Flow::Go)
    }

    pub(super) fn on_error(
        &mut self,
        id: u32,
        e: proto::ErrorBody,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
    ) {
        if let Some(a) = self.apps.iter_mut().find(|a| a.sync_req == id && id != 0) {
            // The store failed: the next PUBACK or SUBSCRIBE tries again.
            a.sync_req = 0;
            self.syncing = false;
            tracing::debug!(code = %e.code, "an MQTT inbox sync failed");
            return;
        }
        match self.take_req(id) {
            Some(Req::Sub {
                packet_id, index, ..
            }) => {
                let code = match e.code {
                    Code::FORBIDDEN => ReasonCode::NOT_AUTHORIZED,
                    Code::LIMIT => ReasonCode::QUOTA_EXCEEDED,
                    Code::BAD_REQUEST => ReasonCode::TOPIC_FILTER_INVALID,
                    _ => ReasonCode::UNSPECIFIED_ERROR,
                };
                self.answer_filter(packet_id, false, index, code);
                self.flush_acks(out);
            }
            Some(Req::Unsub { packet_id, index }) => {
                self.answer_filter(packet_id, true, index, ReasonCode::UNSPECIFIED_ERROR);
                self.flush_acks(out);
            }
            Some(Req::Recover { id }) => {
                tracing::debug!(code = %e.code, "an MQTT topic recovery failed");
                self.recovery_failed(id);
            }
            Some(Req::Refresh { app }) => {
                let topic = format!(
                    "$tether/refresh_refused/{}",
                    self.apps[usize::from(app)].app
                );
                self.publish0(out, &topic, Properties::new(), &Bytes::from(e.message));
            }
            None => {
                let code = match e.code {
                    Code::UNAVAILABLE => ReasonCode::QUOTA_EXCEEDED,
                    Code::NO_WEBHOOK => ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR,
                    Code::BAD_REQUEST => ReasonCode::QUOTA_EXCEEDED,
                    _ => ReasonCode::UNSPECIFIED_ERROR,
                };
                let body = Bytes::from(e.message);
                self.upstream_done(id, code, e.code.0, PayloadKind::Binary, body, out);
            }
        }
        let _ = frames;
    }

    /// An upstream's outcome: its reply on the response topic (5) or the reply topic (3.1.1),
    /// and the PUBACKs that are now due, in the order their PUBLISHes came.
    pub(super) fn upstream_done(
        &mut self,
        req: u32,
        code: ReasonCode,
        status: u16,
        kind: PayloadKind,
        payload: Bytes,
        out: &mut BytesMut,
    ) {
        let version = v(self);
        let Some(i) = self
            .pending()
            .ups
            .iter()
            .position(|u| u.req == req && u.done.is_none())
        else {
            return;
        };
        self.pending_mut().ups[i].done = Some(code);
        let (app, up_kind, response) = {
            let u = &mut self.pending_mut().ups[i];
            (u.app, u.kind.clone(), u.response.take())
        };
        match (version, response) {
            (Version::V5, Some((topic, correlation))) => {
                let mut props = Properties::new();
                if let Some(c) = correlation {
                    props.push(Property::CorrelationData(c));
                }
                props.push(Property::UserProperty("status".into(), status.to_string()));
                json_format(&mut props, kind);
                self.publish0(out, &topic, props, &payload);
            }
            _ => {
                let topic = format!(
                    "$tether/reply/{}/{up_kind}",
                    self.apps[usize::from(app)].app
                );
                if self.reply_subs.contains(&topic) {
                    self.publish0(out, &topic, Properties::new(), &payload);
                }
            }
        }
        while let Some(u) = self.pending().ups.front().filter(|u| u.done.is_some()) {
            if u.packet_id != 0 {
                let mut ack = mqtt::Ack::new(u.packet_id);
                ack.reason = u.done.unwrap_or(ReasonCode::SUCCESS);
                put(version, &Packet::PubAck(ack), out);
            }
            self.pending_mut().ups.pop_front();
        }
    }

    pub(super) fn publish0(
        &mut self,
        out: &mut BytesMut,
        topic: &str,
        props: Properties,
        payload: &Bytes,
    ) {
        self.publish(out, topic, QoS::AtMostOnce, 0, &props, payload);
    }

    /// Appends a PUBLISH to `out`, unless it is larger than the device takes: `false` then.
    pub(super) fn publish(
        &mut self,
        out: &mut BytesMut,
        topic: &str,
        qos: QoS,
        packet_id: u16,
        properties: &Properties,
        payload: &Bytes,
    ) -> bool {
        let head = PublishHead {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id,
            properties,
        };
        let mut bytes = BytesMut::new();
        if mqtt::encode_publish_head(v(self), &head, payload.len(), &mut bytes).is_err() {
            return false;
        }
        if (bytes.len() + payload.len()) as u64 > u64::from(self.max_packet) {
            crate::metrics::mqtt::mqtt().too_large_skipped();
            return false;
        }
        out.put(bytes);
        out.put_slice(payload);
        true
    }
}
