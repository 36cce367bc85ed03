//! SUBSCRIBE and UNSUBSCRIBE: each filter named (an inbox, a reply topic, a tether topic or
//! a refusal), the session's answers gathered into SUBACK and UNSUBACK, and topic
//! publications into PUBLISHes (docs/mqtt.md, sections 5 and 6).

use super::*;

impl State {
    pub(super) fn on_subscribe(
        &mut self,
        s: mqtt::Subscribe,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
    ) -> Result<Flow, Fail> {
        let version = v(self);
        if s.properties
            .iter()
            .any(|p| matches!(p, Property::SubscriptionIdentifier(_)))
        {
            return Err(Fail::new(
                Code::PROTOCOL,
                ReasonCode::SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED,
                "subscription identifiers are not supported",
            ));
        }
        let token = s
            .properties
            .user()
            .find(|(k, _)| *k == "token")
            .map(|(_, t)| t.to_string());
        let mut codes = vec![None; s.filters.len()];
        let mut inbox_changed = false;
        for (index, (filter, options)) in s.filters.into_iter().enumerate() {
            let qos = options.qos.min(QoS::AtLeastOnce);
            let granted = ReasonCode(qos as u8);
            let code = match self.classify(&filter) {
                Filter::Inbox { app, seq_form } => {
                    let a = &mut self.apps[usize::from(app)];
                    a.inbox = match qos {
                        QoS::AtMostOnce => Inbox::Live,
                        _ => Inbox::Durable,
                    };
                    a.seq_form = seq_form;
                    inbox_changed = true;
                    granted
                }
                Filter::Expiring => {
                    self.expiring = true;
                    ReasonCode::GRANTED_QOS_0
                }
                Filter::Reply if self.reply_subs.len() < MAX_REPLY_SUBS => {
                    if !self.reply_subs.contains(&filter) {
                        self.reply_subs.push(filter);
                    }
                    ReasonCode::GRANTED_QOS_0
                }
                Filter::Reply => ReasonCode::QUOTA_EXCEEDED,
                Filter::Refused(code) => code,
                Filter::Topic { app, topic } => {
                    // A topic the session holds resumes from where it stood (section 5).
                    let since = self
                        .topics
                        .iter()
                        .find(|t| t.own && t.app == app && t.topic == topic)
                        .map(|t| t.offset);
                    let req = self.req();
                    frames.push_back(Frame::new(
                        req,
                        proto::Subscribe {
                            app: self.apps[usize::from(app)].app.to_string(),
                            topic: topic.clone(),
                            since,
                            token: token.clone(),
                        },
                    ));
                    self.pending_mut().reqs.push((
                        req,
                        Req::Sub {
                            packet_id: s.packet_id,
                            index,
                            qos,
                            app,
                            topic,
                            filter,
                            since,
                        },
                    ));
                    continue;
                }
            };
            codes[index] = Some(match (version, code.is_error()) {
                (Version::V311, true) => ReasonCode(v311::SUBACK_FAILURE),
                _ => code,
            });
        }
        self.sync_next(frames);
        if inbox_changed {
            self.save_session(false);
        }
        self.waiting_ack(s.packet_id, false, codes, out);
        Ok(Flow::Go)
    }

    pub(super) fn on_unsubscribe(
        &mut self,
        u: mqtt::Unsubscribe,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
    ) -> Result<Flow, Fail> {
        let mut codes = vec![None; u.filters.len()];
        for (index, filter) in u.filters.into_iter().enumerate() {
            codes[index] = Some(match self.classify(&filter) {
                Filter::Inbox { app, .. } => {
                    let a = &mut self.apps[usize::from(app)];
                    let had = a.inbox != Inbox::Off;
                    a.inbox = Inbox::Off;
                    if had {
                        self.save_session(false);
                    }
                    match had {
                        true => ReasonCode::SUCCESS,
                        false => ReasonCode::NO_SUBSCRIPTION_EXISTED,
                    }
                }
                Filter::Expiring => {
                    self.expiring = false;
                    ReasonCode::SUCCESS
                }
                Filter::Reply => {
                    self.reply_subs.retain(|s| *s != filter);
                    ReasonCode::SUCCESS
                }
                Filter::Topic { app, topic } => {
                    if !self.topics.iter().any(|t| t.app == app && t.topic == topic) {
                        ReasonCode::NO_SUBSCRIPTION_EXISTED
                    } else {
                        let req = self.req();
                        frames.push_back(Frame::new(
                            req,
                            proto::Unsubscribe {
                                app: self.apps[usize::from(app)].app.to_string(),
                                topic,
                            },
                        ));
                        self.pending_mut().reqs.push((
                            req,
                            Req::Unsub {
                                packet_id: u.packet_id,
                                index,
                            },
                        ));
                        continue;
                    }
                }
                Filter::Refused(_) => ReasonCode::NO_SUBSCRIPTION_EXISTED,
            });
        }
        self.waiting_ack(u.packet_id, true, codes, out);
        Ok(Flow::Go)
    }

    /// What a topic filter names.
    fn classify(&self, filter: &str) -> Filter {
        if let Some(rest) = filter.strip_prefix("$tether/inbox/") {
            let (app, seq_form) = match rest.strip_suffix("/+") {
                Some(app) => (app, true),
                None => (rest, false),
            };
            return match self.app_index(app) {
                Some(app) => Filter::Inbox { app, seq_form },
                None => Filter::Refused(ReasonCode::TOPIC_FILTER_INVALID),
            };
        }
        if filter == "$tether/expiring" {
            return Filter::Expiring;
        }
        if mqtt::topic::is_shared(filter) {
            return Filter::Refused(ReasonCode::SHARED_SUBSCRIPTIONS_NOT_SUPPORTED);
        }
        if mqtt::topic::has_wildcards(filter) {
            return Filter::Refused(ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED);
        }
        if let Some(rest) = filter.strip_prefix("$tether/reply/") {
            return match rest.split_once('/') {
                Some((app, kind)) if self.app_index(app).is_some() && !kind.is_empty() => {
                    Filter::Reply
                }
                _ => Filter::Refused(ReasonCode::TOPIC_FILTER_INVALID),
            };
        }
        let (app, topic) = match filter.strip_prefix("$tether/topic/") {
            Some(rest) => match rest.split_once('/') {
                Some((app, topic)) => match self.app_index(app) {
                    Some(app) => (app, topic),
                    None => return Filter::Refused(ReasonCode::TOPIC_FILTER_INVALID),
                },
                None => return Filter::Refused(ReasonCode::TOPIC_FILTER_INVALID),
            },
            None if filter.starts_with('$') => {
                return Filter::Refused(ReasonCode::TOPIC_FILTER_INVALID);
            }
            None => (0, filter),
        };
        if validate_id("topic", topic).is_err() {
            return Filter::Refused(ReasonCode::TOPIC_FILTER_INVALID);
        }
        Filter::Topic {
            app,
            topic: topic.to_string(),
        }
    }

    /// Writes the SUBACK or UNSUBACK now if every filter has its code, else keeps it until
    /// the session answered the rest.
    fn waiting_ack(
        &mut self,
        packet_id: u16,
        unsubscribe: bool,
        codes: Vec<Option<ReasonCode>>,
        out: &mut BytesMut,
    ) {
        self.pending_mut().acks.push(WaitingAck {
            packet_id,
            unsubscribe,
            codes,
        });
        self.flush_acks(out);
    }

    pub(super) fn flush_acks(&mut self, out: &mut BytesMut) {
        let version = v(self);
        while let Some(i) = self
            .pending()
            .acks
            .iter()
            .position(|a| a.codes.iter().all(Option::is_some))
        {
            let a = self.pending_mut().acks.remove(i);
            let codes = a.codes.into_iter().flatten().collect();
            let packet = match a.unsubscribe {
                false => Packet::SubAck(mqtt::SubAck {
                    packet_id: a.packet_id,
                    properties: Properties::new(),
                    codes,
                }),
                true => Packet::UnsubAck(mqtt::UnsubAck {
                    packet_id: a.packet_id,
                    properties: Properties::new(),
                    codes,
                }),
            };
            put(version, &packet, out);
        }
        if self.pending().acks.is_empty() && self.pending().acks.capacity() > 0 {
            self.pending_mut().acks = Vec::new();
        }
    }

    pub(super) fn answer_filter(
        &mut self,
        packet_id: u16,
        unsubscribe: bool,
        index: usize,
        code: ReasonCode,
    ) {
        let code = match (v(self), code.is_error(), unsubscribe) {
            (Version::V311, true, false) => ReasonCode(v311::SUBACK_FAILURE),
            _ => code,
        };
        if let Some(a) = self
            .pending_mut()
            .acks
            .iter_mut()
            .find(|a| a.packet_id == packet_id && a.unsubscribe == unsubscribe)
            && let Some(slot) = a.codes.get_mut(index)
        {
            *slot = Some(code);
        }
    }

    /// A publication of a topic the connection holds: QoS 1 when the topic was subscribed at
    /// QoS 1 and the publication is in the topic's history (docs/mqtt.md, section 5), in
    /// offset order within the window; QoS 0 otherwise.
    pub(super) fn on_publication(
        &mut self,
        p: proto::Publication,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
    ) {
        let Some(app) = self.app_index(&p.app) else {
            return;
        };
        let room = self.room() > 0;
        let mut qos1 = None;
        let name = match self
            .topics
            .iter_mut()
            .find(|t| t.app == app && t.topic == p.topic)
        {
            Some(t) if t.qos == QoS::AtLeastOnce && p.offset > 0 => {
                if p.offset <= t.offset {
                    // Sent already: a recovery's page overlapping what came live.
                    return;
                }
                if t.gap || p.offset != t.offset + 1 || !room {
                    // Not sent, so not acked: a recovery from `offset` fetches it, in order.
                    t.gap = true;
                    self.recover_next(frames);
                    return;
                }
                t.offset = p.offset;
                qos1 = Some(t.id);
                t.name.clone()
            }
            Some(t) => {
                t.offset = t.offset.max(p.offset);
                t.name.clone()
            }
            None => None,
        };
        let name = name.unwrap_or_else(|| self.topic_name(app, &p.topic));
        let mut props = Properties::new();
        if v(self) == Version::V5 {
            props.push(Property::UserProperty(
                "offset".into(),
                p.offset.to_string(),
            ));
            props.push(Property::UserProperty(
                "msg_id".into(),
                p.msg_id.to_string(),
            ));
            json_format(&mut props, p.kind);
        }
        let Some(topic) = qos1 else {
            self.publish0(out, &name, props, &p.payload);
            return;
        };
        let packet_id = self.packet_id();
        let written = self.publish(out, &name, QoS::AtLeastOnce, packet_id, &props, &p.payload);
        // One the device cannot take counts as sent and acked (docs/mqtt.md 4.5).
        self.pending_mut().inflight.push_back(Inflight {
            packet_id: if written { packet_id } else { 0 },
            app,
            topic,
            seq: p.offset,
            acked: !written,
        });
        if !written {
            self.settle_window(frames);
        }
    }

    /// Asks the session again for a QoS 1 topic's publications after the last one sent, when
    /// one was not sent and there is room in the window: one recovery at a time, as a
    /// `subscribe` with `since` to the topic held (docs/protocol.md 7.2), whose page follows
    /// its `subscribed`.
    pub(super) fn recover_next(&mut self, frames: &mut VecDeque<Frame>) {
        if self.room() == 0 || self.topics.iter().any(|t| t.recovering) {
            return;
        }
        let Some(t) = self.topics.iter_mut().find(|t| t.gap) else {
            return;
        };
        t.recovering = true;
        let (id, app, topic, since) = (t.id, t.app, t.topic.clone(), t.offset);
        crate::metrics::mqtt::mqtt().topic_recovery();
        let req = self.req();
        frames.push_back(Frame::new(
            req,
            proto::Subscribe {
                app: self.apps[usize::from(app)].app.to_string(),
                topic,
                since: Some(since),
                token: None,
            },
        ));
        self.pending_mut().reqs.push((req, Req::Recover { id }));
    }

    /// A recovery's answer: its page follows (`complete`), or the history no longer reaches
    /// back (`too_old`: those publications are lost to the device, and the topic goes on
    /// from where it stands now).
    fn recovered(&mut self, id: u16, s: &proto::Subscribed) {
        if let Some(t) = self.topics.iter_mut().find(|t| t.id == id) {
            t.recovering = false;
            t.gap = false;
            if s.recovery != proto::Recovery::Complete {
                t.offset = t.offset.max(s.offset);
            }
        }
    }

    /// A recovery refused (the store is down, the node busy): the next PUBACK, or the topic's
    /// next publication, tries again.
    pub(super) fn recovery_failed(&mut self, id: u16) {
        if let Some(t) = self.topics.iter_mut().find(|t| t.id == id) {
            t.recovering = false;
        }
    }

    /// The name a topic's publications go out on when no SUBSCRIBE named it.
    pub(super) fn topic_name(&self, app: u8, topic: &str) -> String {
        match app == 0 && !topic.starts_with('$') {
            true => topic.to_string(),
            false => format!("$tether/topic/{}/{topic}", self.apps[usize::from(app)].app),
        }
    }

    pub(super) fn on_subscribed(&mut self, id: u32, s: proto::Subscribed, out: &mut BytesMut) {
        let (app, topic, name, answer) = match self.take_req(id) {
            Some(Req::Recover { id }) => return self.recovered(id, &s),
            Some(Req::Sub {
                packet_id,
                index,
                qos,
                app,
                topic,
                filter,
                since,
            }) => (app, topic, filter, Some((packet_id, index, qos, since))),
            Some(other) => {
                self.pending_mut().reqs.push((id, other));
                return;
            }
            None => {
                let Some(app) = self.app_index(&s.app) else {
                    return;
                };
                let name = self.topic_name(app, &s.topic);
                (app, s.topic, name, None)
            }
        };
        let (own, qos) = match answer {
            Some((_, _, qos, _)) => (true, qos),
            None => (false, QoS::AtMostOnce),
        };
        // Recovered publications follow `subscribed`: until they are sent, the topic stands
        // where the recovery began.
        let offset = match (s.recovery, answer.and_then(|a| a.3)) {
            (proto::Recovery::Complete, Some(since)) => since,
            _ => s.offset,
        };
        // Kept only when it is not the name the topic's publications go out on anyway.
        let name = (name != self.topic_name(app, &topic)).then_some(name);
        match self
            .topics
            .iter_mut()
            .find(|t| t.app == app && t.topic == topic)
        {
            Some(t) => {
                t.name = name;
                let was = t.qos;
                if own {
                    (t.own, t.qos) = (true, qos);
                }
                t.offset = t.offset.max(offset);
                if t.qos != was {
                    // Nothing of the other QoS waits for a PUBACK: acked so far.
                    t.acked = t.offset;
                }
            }
            None => {
                let id = self.topic_id();
                // Kept as long as the connection: no spare room (see `State::compact`).
                self.topics.reserve_exact(1);
                self.topics.push(TopicName {
                    app,
                    topic,
                    name,
                    own,
                    qos,
                    id,
                    gap: false,
                    recovering: false,
                    offset,
                    acked: offset,
                });
            }
        }
        if let Some((packet_id, index, qos, _)) = answer {
            if packet_id != 0 {
                self.answer_filter(packet_id, false, index, ReasonCode(qos as u8));
                self.flush_acks(out);
            }
            self.save_session(false);
        }
    }

    pub(super) fn on_unsubscribed(&mut self, id: u32, u: proto::Unsubscribed, out: &mut BytesMut) {
        if let Some(app) = self.app_index(&u.app) {
            let before = self.topics.len();
            self.topics
                .retain(|t| !(t.app == app && t.topic == u.topic));
            if self.topics.len() < before {
                self.save_session(false);
            }
        }
        match self.take_req(id) {
            Some(Req::Unsub { packet_id, index }) => {
                self.answer_filter(packet_id, true, index, ReasonCode::SUCCESS);
                self.flush_acks(out);
            }
            Some(other) => self.pending_mut().reqs.push((id, other)),
            None => {}
        }
    }
}

/// What a topic filter names.
enum Filter {
    Inbox { app: u8, seq_form: bool },
    Expiring,
    Reply,
    Topic { app: u8, topic: String },
    Refused(ReasonCode),
}
