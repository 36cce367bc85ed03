//! What a frame from a connected client asks for, checked: the binding it names, its topic,
//! its limits. Plain code from the frame and the connection's bindings to a [`Step`] that the
//! gateway carries out, the same for every transport.

use tether_core::{TopicId, echo_id, validate_id};
use tether_proto::{Body, Code, ErrorBody, Upstream};

use super::inbox::{SYNC_PAGE, SyncRequest};
use crate::link::Binding;

/// What a frame from a connected client comes to.
#[derive(Debug)]
pub enum Step {
    /// Nothing to do (a `pong`).
    Nothing,
    /// Answer with this body, under the frame's request id.
    Reply(Body),
    /// The client has binding `binding`'s messages up to `seq`.
    Ack {
        binding: usize,
        seq: u64,
    },
    /// Answer a `sync` once the store is read.
    Sync(SyncRequest),
    /// Subscribe binding `binding` to `topic`, recovering what came after `since`.
    Subscribe {
        binding: usize,
        topic: TopicId,
        since: Option<u64>,
    },
    Unsubscribe {
        binding: usize,
        topic: TopicId,
    },
    /// Data for binding `binding`'s app's webhook.
    Upstream {
        binding: usize,
        up: Upstream,
    },
    /// The client said goodbye, with this code of its own.
    Leave(Code),
    /// Close the connection: the client broke the protocol.
    Close(Code, String),
}

/// The step frame `id` with body `body` asks for on a connection with `bindings`.
pub fn step(id: u32, body: Body, bindings: &[Binding]) -> Step {
    let binding = |op: &str, app: &str| {
        bindings
            .iter()
            .position(|b| b.app.as_str() == app)
            .ok_or_else(|| {
                error(
                    Code::BAD_REQUEST,
                    format!(
                        "{op} for app {:?}, which this connection has not bound",
                        echo_id(app)
                    ),
                )
            })
    };
    let topic = |topic: &str| {
        validate_id("topic", topic)
            .map(|()| TopicId::from(topic))
            .map_err(|e| error(Code::BAD_REQUEST, e))
    };
    let checked = match body {
        Body::Ping => Ok(Step::Reply(Body::Pong)),
        Body::Pong => Ok(Step::Nothing),
        Body::Ack(ack) => binding("ack", &ack.app).map(|binding| Step::Ack {
            binding,
            seq: ack.seq,
        }),
        Body::Sync(sync) => binding("sync", &sync.app).map(|binding| {
            let limit = match sync.limit as usize {
                0 => SYNC_PAGE,
                n => n.min(SYNC_PAGE),
            };
            Step::Sync(SyncRequest {
                id,
                binding,
                after: sync.after,
                limit,
            })
        }),
        Body::Subscribe(sub) => binding("subscribe", &sub.app).and_then(|binding| {
            Ok(Step::Subscribe {
                binding,
                topic: topic(&sub.topic)?,
                since: sub.since,
            })
        }),
        Body::Unsubscribe(unsub) => binding("unsubscribe", &unsub.app).and_then(|binding| {
            Ok(Step::Unsubscribe {
                binding,
                topic: topic(&unsub.topic)?,
            })
        }),
        Body::Upstream(up) => {
            binding("upstream", &up.app).map(|binding| Step::Upstream { binding, up })
        }
        Body::Disconnect(d) => Ok(Step::Leave(d.code)),
        Body::Connect(_) => Ok(Step::Close(
            Code::EXPECTED_CONNECT,
            "connect sent twice".into(),
        )),
        other => Ok(Step::Close(
            Code::PROTOCOL,
            format!("op {} is not sent by clients", other.op().name()),
        )),
    };
    checked.unwrap_or_else(Step::Reply)
}

/// An `error` body.
pub fn error(code: Code, message: String) -> Body {
    Body::Error(ErrorBody { code, message })
}

#[cfg(test)]
mod tests {
    use tether_core::{AppId, UserId};
    use tether_proto::{Ack, Subscribe, Sync};

    use super::*;

    fn bindings() -> Vec<Binding> {
        vec![
            Binding::new(AppId::from("chat"), UserId::from("u"), 0),
            Binding::new(AppId::from("shop"), UserId::from("u"), 0),
        ]
    }

    fn refused(step: Step) -> (Code, String) {
        match step {
            Step::Reply(Body::Error(e)) => (e.code, e.message),
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn ops_name_their_binding_and_unbound_apps_are_refused() {
        let ack = |app: &str| {
            Body::Ack(Ack {
                app: app.into(),
                seq: 9,
            })
        };
        assert!(matches!(
            step(1, ack("shop"), &bindings()),
            Step::Ack { binding: 1, seq: 9 }
        ));
        let (code, message) = refused(step(1, ack(&"z".repeat(1000)), &bindings()));
        assert_eq!(code, Code::BAD_REQUEST);
        assert!(message.starts_with("ack for app") && message.len() < 200);
    }

    #[test]
    fn a_sync_is_capped_and_a_bad_topic_is_refused() {
        let sync = Body::Sync(Sync {
            app: "chat".into(),
            after: 4,
            limit: 10_000,
        });
        let Step::Sync(request) = step(7, sync, &bindings()) else {
            panic!("not a sync");
        };
        assert_eq!(
            (request.id, request.limit, request.after),
            (7, SYNC_PAGE, 4)
        );
        let sub = Body::Subscribe(Subscribe {
            app: "chat".into(),
            topic: String::new(),
            since: None,
        });
        assert_eq!(refused(step(2, sub, &bindings())).0, Code::BAD_REQUEST);
    }

    #[test]
    fn server_ops_from_a_client_close_the_connection() {
        assert!(matches!(step(1, Body::Pong, &bindings()), Step::Nothing));
        assert!(matches!(
            step(1, Body::Ping, &bindings()),
            Step::Reply(Body::Pong)
        ));
        let push = Body::Synced(tether_proto::Synced {
            app: "chat".into(),
            last: 0,
            head: 0,
        });
        assert!(matches!(
            step(1, push, &bindings()),
            Step::Close(Code::PROTOCOL, _)
        ));
    }
}
