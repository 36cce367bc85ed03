//! Many single-user pushes in one call (`POST /v1/apps/{app}/push/batch`).
//!
//! What a batch saves over as many single pushes is per-request work: the HTTP request, one
//! registry lookup for every user of the batch instead of one per push, and, for the durable
//! ones, one [`Inboxes::append_many`](tether_core::Inboxes::append_many) (the embedded store
//! writes them as one queue entry, one fjall batch and one fsync). Each push still has its own
//! id, seq, idempotency key and outcome: one that fails does not fail the others.
//!
//! Order: the durable pushes are stored first (in the batch's order, so two pushes to one user
//! take their seqs in that order), then every push is routed in the batch's order, so a
//! connection gets a user's pushes in the order the batch lists them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tether_core::store::{Append, Idempotency, NewMessage};
use tether_core::{AppId, MessageId, Outgoing, Seq, Session, UserId};
use tether_proto::Push;

use super::{Delivery, DeliveryError, Payload};

/// One push of a batch, validated by the front end.
#[derive(Debug)]
pub struct BatchPush {
    pub user: UserId,
    pub payload: Payload,
    /// `Some` for a durable (qos 1) push.
    pub durable: Option<Durability>,
}

/// What a durable push of a batch asks of the store.
#[derive(Debug)]
pub struct Durability {
    pub ttl: Duration,
    pub idempotency_key: Option<String>,
}

/// One push's outcome.
#[derive(Debug, Clone, Copy)]
pub struct BatchSent {
    pub id: MessageId,
    /// The user's seq and whether the idempotency key was already stored (durable only).
    pub stored: Option<(Seq, bool)>,
    /// Connections it was handed to (for another node: sent to).
    pub connections: usize,
}

/// A push of the batch on its way: the frame to route, or why it failed.
struct Pending {
    user: UserId,
    outcome: Result<(BatchSent, Arc<Outgoing>), DeliveryError>,
}

impl Delivery {
    /// Each of `pushes`, one outcome each, in their order (see the module's doc).
    pub async fn push_batch(
        &self,
        app: &AppId,
        pushes: Vec<BatchPush>,
    ) -> Vec<Result<BatchSent, DeliveryError>> {
        let accepted = Instant::now();
        let now = tether_core::now_ms();
        let mut appends = Vec::new();
        // Each push: its user, kind, payload and id; the durable ones' messages go to the store.
        let mut planned = Vec::with_capacity(pushes.len());
        for push in pushes {
            let id = self.ids.next();
            let durable = push.durable.is_some();
            if let Some(durable) = push.durable {
                let message = NewMessage {
                    id,
                    created_ms: now,
                    expires_ms: now.saturating_add(durable.ttl.as_millis() as u64),
                    kind: push.payload.kind,
                    payload: push.payload.bytes.clone(),
                };
                appends.push(Append {
                    app: app.clone(),
                    users: vec![push.user.clone()],
                    message,
                    idempotency: durable.idempotency_key.map(|key| Idempotency {
                        key,
                        expires_ms: now.saturating_add(self.idempotency_window.as_millis() as u64),
                    }),
                });
            }
            planned.push((push.user, push.payload, id, durable));
        }
        let mut stored = self.store.append_many(appends).await.into_iter();
        let mut pending = Vec::with_capacity(planned.len());
        for (user, payload, id, durable) in planned {
            let mut frame = Push {
                app: app.to_string(),
                msg_id: id.0,
                seq: 0,
                qos: 0,
                created_ms: now,
                kind: payload.kind,
                payload: payload.bytes,
            };
            let mut sent = BatchSent {
                id,
                stored: None,
                connections: 0,
            };
            if durable {
                let answer = stored.next().unwrap_or_else(|| {
                    Err(tether_core::StoreError::Unavailable(
                        "the store answered fewer appends than it was given".into(),
                    ))
                });
                let appended = match answer {
                    Ok(appended) => appended,
                    Err(e) => {
                        self.metrics.store_error("append");
                        pending.push(Pending {
                            user,
                            outcome: Err(e.into()),
                        });
                        continue;
                    }
                };
                let seq = appended.seqs.first().map_or(Seq(0), |(_, seq)| *seq);
                // A duplicate is routed too, with the first push's id (as a single push is).
                frame.msg_id = appended.id.0;
                frame.created_ms = appended.created_ms;
                frame.seq = seq.0;
                frame.qos = 1;
                sent.id = appended.id;
                sent.stored = Some((seq, appended.duplicate));
            }
            let msg = Arc::new(Outgoing::new(frame).accepted_at(accepted));
            pending.push(Pending {
                user,
                outcome: Ok((sent, msg)),
            });
        }
        self.route_batch(app, pending).await
    }

    /// Routes each push that has a frame to its user's connections, in the batch's order,
    /// after one registry lookup for all of them.
    async fn route_batch(
        &self,
        app: &AppId,
        pending: Vec<Pending>,
    ) -> Vec<Result<BatchSent, DeliveryError>> {
        let mut users: Vec<UserId> = pending
            .iter()
            .filter(|p| p.outcome.is_ok())
            .map(|p| p.user.clone())
            .collect();
        users.sort_unstable();
        users.dedup();
        let mut sessions = if users.is_empty() {
            Ok(Vec::new())
        } else {
            self.registry.sessions(app, &users).await
        };
        if let Ok(sessions) = &mut sessions {
            sessions.sort_unstable_by(|a, b| (&a.user, &a.node).cmp(&(&b.user, &b.node)));
        }
        let mut conns = Vec::new();
        let mut answers = Vec::with_capacity(pending.len());
        for Pending { user, outcome } in pending {
            let (mut sent, msg) = match outcome {
                Ok(ready) => ready,
                Err(e) => {
                    answers.push(Err(e));
                    continue;
                }
            };
            let durable = sent.stored.is_some();
            let sessions = match &sessions {
                Ok(sessions) => sessions_of(sessions, &user),
                // Stored: the client gets it from its inbox. Live: not sent at all, as a
                // single live push whose lookup failed.
                Err(e) if durable => {
                    tracing::warn!(error = %e, "batch push stored but not routed");
                    &[]
                }
                Err(e) => {
                    answers.push(Err(e.clone().into()));
                    continue;
                }
            };
            for on_node in sessions.chunk_by(|a, b| a.node == b.node) {
                let node = &on_node[0].node;
                conns.clear();
                conns.extend(on_node.iter().map(|s| s.conn));
                match self.router.deliver(node, &conns, msg.clone()).await {
                    Ok(n) => sent.connections += n,
                    // Best effort: live pushes skip a node that cannot be reached, durable
                    // ones reach the client from its inbox.
                    Err(e) => tracing::warn!(%node, error = %e, "batch push not routed"),
                }
            }
            self.metrics.push(u8::from(durable));
            answers.push(Ok(sent));
        }
        answers
    }
}

/// The sessions of `user` in `sessions`, which are sorted by user.
fn sessions_of<'a>(sessions: &'a [Session], user: &UserId) -> &'a [Session] {
    let start = sessions.partition_point(|s| &s.user < user);
    let len = sessions[start..].partition_point(|s| &s.user == user);
    &sessions[start..start + len]
}
