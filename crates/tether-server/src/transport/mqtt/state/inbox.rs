//! The durable inbox over QoS 1 (docs/mqtt.md, section 4): pushes into PUBLISHes within the
//! in-flight window, PUBACKs into cumulative `ack`s, and what was left out pulled again
//! with `sync`.

use super::*;

impl State {
    pub(super) fn on_puback(&mut self, packet_id: u16, frames: &mut VecDeque<Frame>) {
        match self
            .pending_mut()
            .inflight
            .iter_mut()
            .find(|f| f.packet_id == packet_id && !f.acked)
        {
            Some(f) => f.acked = true,
            None => {
                self.unknown_acks += 1;
                return;
            }
        }
        self.settle_window(frames);
    }

    /// Takes the acked run at the front of the window off it, as one cumulative `ack` per
    /// app, then fetches what waited for room.
    pub(super) fn settle_window(&mut self, frames: &mut VecDeque<Frame>) {
        let mut acked: Vec<(u8, u64)> = Vec::new();
        while let Some(f) = self.pending().inflight.front().filter(|f| f.acked).copied() {
            self.pending_mut().inflight.pop_front();
            if f.topic != 0 {
                // A topic's: its publications went out in offset order, so this is its
                // highest acked run (no tether ack: only the session's offset moves).
                if let Some(t) = self.topics.iter_mut().find(|t| t.id == f.topic) {
                    t.acked = t.acked.max(f.seq);
                }
                continue;
            }
            match acked.iter_mut().find(|(a, _)| *a == f.app) {
                Some((_, seq)) => *seq = (*seq).max(f.seq),
                None => acked.push((f.app, f.seq)),
            }
        }
        for (app, seq) in acked {
            let app = self.apps[usize::from(app)].app.to_string();
            frames.push_back(Frame::new(self.req(), proto::Ack { app, seq }));
        }
        if self.pending().inflight.is_empty() && self.pending().inflight.capacity() > 0 {
            self.pending_mut().inflight = VecDeque::new();
        }
        self.sync_next(frames);
        self.recover_next(frames);
    }

    /// Asks the session for the durable pushes an inbox has not had, if one needs them and
    /// there is room for them in the window.
    pub(super) fn sync_next(&mut self, frames: &mut VecDeque<Frame>) {
        if self.syncing || self.room() == 0 {
            return;
        }
        let room = self.room() as u32;
        let Some(i) = self.apps.iter().position(AppInbox::wants_sync) else {
            return;
        };
        let req = self.req();
        let app = &mut self.apps[i];
        app.sync_req = req;
        app.sync_got = false;
        self.syncing = true;
        frames.push_back(Frame::new(
            req,
            proto::Sync {
                app: app.app.to_string(),
                after: app.sync_after(),
                limit: room,
            },
        ));
    }

    pub(super) fn on_push(
        &mut self,
        id: u32,
        p: proto::Push,
        frames: &mut VecDeque<Frame>,
        out: &mut BytesMut,
    ) {
        let Some(ai) = self.app_index(&p.app) else {
            return;
        };
        let a = &mut self.apps[usize::from(ai)];
        if p.qos == 0 || p.seq == 0 {
            if id == 0 && a.inbox != Inbox::Off {
                self.publish_push(ai, &p, QoS::AtMostOnce, out);
            }
            return;
        }
        if id != 0 && id != a.sync_req {
            return;
        }
        match a.inbox {
            Inbox::Off => {
                if id == 0 {
                    a.missed(p.seq);
                }
                return;
            }
            Inbox::Live => {
                if id == 0 {
                    self.publish_push(ai, &p, QoS::AtMostOnce, out);
                }
                return;
            }
            Inbox::Durable => {}
        }
        if p.seq <= a.delivered {
            return;
        }
        let room = usize::from(self.receive_max) > self.pending().inflight.len();
        let a = &mut self.apps[usize::from(ai)];
        if (id == 0 && (a.sync_req != 0 || a.gap_hi > a.delivered)) || !room {
            a.missed(p.seq);
            self.sync_next(frames);
            return;
        }
        if id != 0 {
            a.sync_got = true;
        }
        a.delivered = p.seq;
        self.publish_push(ai, &p, QoS::AtLeastOnce, out);
    }

    /// Publishes a push on its inbox topic; a durable one takes a place in the window.
    fn publish_push(&mut self, app: u8, p: &proto::Push, qos: QoS, out: &mut BytesMut) {
        let version = v(self);
        let a = &self.apps[usize::from(app)];
        let topic = match a.seq_form {
            true => format!("$tether/inbox/{}/{}", a.app, p.seq),
            false => format!("$tether/inbox/{}", a.app),
        };
        let mut props = Properties::new();
        if version == Version::V5 {
            props.push(Property::UserProperty("seq".into(), p.seq.to_string()));
            props.push(Property::UserProperty(
                "msg_id".into(),
                p.msg_id.to_string(),
            ));
            props.push(Property::UserProperty(
                "created_ms".into(),
                p.created_ms.to_string(),
            ));
            json_format(&mut props, p.kind);
        }
        let packet_id = match qos {
            QoS::AtMostOnce => 0,
            _ => self.packet_id(),
        };
        let written = self.publish(out, &topic, qos, packet_id, &props, &p.payload);
        if qos == QoS::AtLeastOnce {
            // One the device cannot take counts as sent and acked (docs/mqtt.md 4.5).
            self.pending_mut().inflight.push_back(Inflight {
                packet_id: if written { packet_id } else { 0 },
                app,
                topic: 0,
                seq: p.seq,
                acked: !written,
            });
        }
    }

    pub(super) fn on_synced(&mut self, id: u32, s: proto::Synced, frames: &mut VecDeque<Frame>) {
        let Some(a) = self.apps.iter_mut().find(|a| a.sync_req == id && id != 0) else {
            return;
        };
        a.sync_req = 0;
        self.syncing = false;
        // A device that left the QoS 1 inbox while the sync ran had the sync's pushes
        // dropped: its gap stays as it is, for its next QoS 1 subscribe to fetch.
        if a.inbox == Inbox::Durable {
            if a.sync_got {
                a.gap_hi = a.gap_hi.max(s.head);
            } else {
                // Nothing after `after` is held any more: what was missed expired.
                a.gap_hi = 0;
                a.gap_lo = 0;
            }
        }
        // Entries skipped as too large may have left an acked run at the front.
        self.settle_window(frames);
    }
}
