//! What a frame from a connected client asks for, checked: the binding it names, its topic,
//! its limits, whether the app's rules let it subscribe, a refreshed token. Plain code from
//! the frame, the connection's bindings and the apps' rules to a [`Step`] that the gateway
//! carries out, the same for every transport. A subscribe that a `webhook` rule leaves to the
//! app's business is a [`Step::Check`]: the gateway asks ([`ask`]) and settles it with the
//! answer ([`checked`]).

use tether_core::auth::TokenError;
use tether_core::{ConnId, DeviceId, TopicId, echo_id, validate_id};
use tether_proto::{Body, Code, ErrorBody, Refresh, Refreshed, Subscribe, Upstream};

use super::access::Access;
use super::ask::{Asked, Question, Verdict};
use super::inbox::{SYNC_PAGE, SyncRequest};
use super::permissions::{Credentials, Decision};
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
    /// Subscribe binding `binding` to `topic` as [`Step::Subscribe`] does, if the app's
    /// webhook allows it: a `webhook` rule matched.
    Check {
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

/// The step frame `id` with body `body` asks for on a connection with `bindings`, under the
/// apps' rules `access`; `holds(binding, topic)` says whether the connection already has the
/// topic (a subscription the business made, or one allowed before), which a resubscribe with
/// `since` may ask for again whatever the rules say now.
pub fn step(
    id: u32,
    body: Body,
    bindings: &[Binding],
    access: &Access,
    holds: impl Fn(usize, &TopicId) -> bool,
) -> Step {
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
            let topic = topic(&sub.topic)?;
            let since = sub.since;
            let permitted = match holds(binding, &topic) {
                true => Permit::Now,
                false => permit(&bindings[binding], &topic, &sub, access)?,
            };
            Ok(match permitted {
                Permit::Now => Step::Subscribe {
                    binding,
                    topic,
                    since,
                },
                Permit::Ask => Step::Check {
                    binding,
                    topic,
                    since,
                },
            })
        }),
        Body::Refresh(refresh) => binding("refresh", &refresh.app)
            .and_then(|binding| self::refresh(&bindings[binding], refresh, access)),
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

/// What the rules say of a subscribe they do not refuse.
enum Permit {
    Now,
    /// When the app's webhook says so.
    Ask,
}

/// Whether the app's topic rules let `binding`'s user subscribe to `topic`, with what the
/// subscribe brings; a refusal is the `error` the client gets.
fn permit(
    binding: &Binding,
    topic: &TopicId,
    sub: &Subscribe,
    access: &Access,
) -> Result<Permit, Body> {
    let refused = |why: &str| refusal(Code::FORBIDDEN, topic, why);
    // An app removed by a reload allows nothing; its connections are being closed.
    let Some((_, rules)) = access.app(binding.app.as_str()) else {
        return Err(refused("the app is no longer configured"));
    };
    let subscription_token = match &sub.token {
        None => false,
        Some(token) => match rules.tokens.verify_subscription(
            &binding.app,
            &binding.user,
            topic.as_str(),
            token,
        ) {
            Ok(()) => true,
            Err(TokenError::Expired) => return Err(refused("the subscription token expired")),
            Err(TokenError::Invalid(why)) => {
                return Err(refused(&format!("bad subscription token: {why}")));
            }
        },
    };
    let credentials = Credentials {
        token_topics: binding.topics(),
        subscription_token,
    };
    match rules
        .topics
        .decide(&binding.user, topic.as_str(), credentials)
    {
        Decision::Allow => Ok(Permit::Now),
        Decision::Ask => Ok(Permit::Ask),
        Decision::Deny(why) => Err(refused(why)),
    }
}

/// Asks `binding`'s app whether its user may subscribe to `topic` (a [`Step::Check`]), for
/// connection `conn` of `device`.
pub fn ask(
    access: &Access,
    binding: &Binding,
    device: &DeviceId,
    conn: ConnId,
    topic: &TopicId,
) -> Asked {
    let asker = access
        .app(binding.app.as_str())
        .and_then(|(_, rules)| rules.webhook.as_ref());
    let Some(asker) = asker else {
        return Asked::Known(Verdict::NoWebhook);
    };
    asker.ask(Question {
        app: binding.app.clone(),
        user: binding.user.clone(),
        device: device.clone(),
        conn,
        topic: topic.clone(),
    })
}

/// Whether a [`Step::Check`] of `topic` may go ahead, given what its app answered; a refusal
/// is the `error` the client gets.
pub fn checked(topic: &TopicId, verdict: Verdict) -> Result<(), Body> {
    match verdict.refusal() {
        None => Ok(()),
        Some((code, why)) => Err(refusal(code, topic, why)),
    }
}

/// The `error` a [`Step::Check`] of `topic` gets when an unsubscribe of the topic came before
/// its answer: the unsubscribe wins.
pub fn cancelled(topic: &TopicId) -> Body {
    error(
        Code::BAD_REQUEST,
        format!(
            "subscribe to {} cancelled: an unsubscribe came before its permission check's answer",
            echo_id(topic.as_str())
        ),
    )
}

/// The `error` refusing a subscribe to `topic`.
fn refusal(code: Code, topic: &TopicId, why: &str) -> Body {
    error(
        code,
        format!("subscribe to {} refused: {why}", echo_id(topic.as_str())),
    )
}

/// A new token for `binding`: it must verify under the app's rules and name the same user;
/// then the binding holds until its `exp`.
fn refresh(binding: &Binding, refresh: Refresh, access: &Access) -> Result<Step, Body> {
    let refused = |why: &str| {
        error(
            Code::TOKEN_REFUSED,
            format!("refresh for app {} refused: {why}", binding.app),
        )
    };
    let Some((app, rules)) = access.app(binding.app.as_str()) else {
        return Err(refused("the app is no longer configured"));
    };
    match rules.tokens.verify(app, &refresh.token) {
        Ok(grant) if grant.user == binding.user => {
            binding.extend(grant.exp);
            Ok(Step::Reply(Body::Refreshed(Refreshed {
                app: refresh.app,
                expires_s: grant.exp,
            })))
        }
        Ok(_) => Err(refused("the token is for another user")),
        Err(TokenError::Expired) => Err(refused("the token expired")),
        Err(TokenError::Invalid(why)) => Err(refused(why)),
    }
}

/// An `error` body.
pub fn error(code: Code, message: String) -> Body {
    Body::Error(ErrorBody { code, message })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;
    use std::time::Duration;

    use tether_core::{AppId, UserId, auth};
    use tether_proto::{Ack, Sync};

    use super::*;
    use crate::config::{AppConfig, Config, Secret, TopicAccess, TopicRule};
    use crate::session::ask::{Asker, Question};

    const SECRET: &str = "chat-secret-0123456789";

    /// Apps `chat` (rules: `open.*` open, `user.{user}` user, `vip.*` token, `ask.*` webhook)
    /// and `shop` (none).
    fn access() -> Access {
        let mut config = Config::for_tests();
        let mut chat = AppConfig::new(
            AppId::from("chat"),
            Secret::new(SECRET),
            Secret::new("chat-api-key-0123456789"),
        );
        for (pattern, allow) in [
            ("open.*", TopicAccess::Open),
            ("user.{user}", TopicAccess::User),
            ("vip.*", TopicAccess::Token),
            ("ask.*", TopicAccess::Webhook),
        ] {
            chat.topics.push(TopicRule {
                pattern: pattern.into(),
                allow,
            });
        }
        // Never reached: these tests do not poll a question.
        chat.webhook = Some("http://127.0.0.1:9/hook".into());
        // An asker for the app with a webhook, as the webhook role makes them; nothing is
        // sent until its answer is polled.
        #[derive(Debug)]
        struct Unasked;
        impl Asker for Unasked {
            fn ask(&self, _: Question) -> Asked {
                Asked::Later(Box::pin(std::future::pending()))
            }
        }
        fn askers(config: &Config) -> Result<HashMap<AppId, Arc<dyn Asker>>, String> {
            let asking = config.apps.iter().filter(|app| app.webhook.is_some());
            Ok(asking
                .map(|app| (app.id.clone(), Arc::new(Unasked) as Arc<dyn Asker>))
                .collect())
        }
        let shop = AppConfig::new(
            AppId::from("shop"),
            Secret::new("shop-secret-0123456789"),
            Secret::new("shop-api-key-0123456789"),
        );
        config.apps = vec![chat, shop];
        Access::with_askers(&config, askers).expect("valid rules")
    }

    fn bindings() -> Vec<Binding> {
        vec![
            Binding::new(AppId::from("chat"), UserId::from("u"), 0)
                .with_topics(Some(vec!["vip.gold".into()])),
            Binding::new(AppId::from("shop"), UserId::from("u"), 0),
        ]
    }

    fn step(id: u32, body: Body, bindings: &[Binding]) -> Step {
        super::step(id, body, bindings, &access(), |_, _| false)
    }

    fn subscribe(app: &str, topic: &str, token: Option<String>) -> Body {
        Body::Subscribe(Subscribe {
            app: app.into(),
            topic: topic.into(),
            since: None,
            token,
        })
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
        let sub = subscribe("chat", "", None);
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

    #[test]
    fn subscribes_follow_the_app_s_topic_rules() {
        let allowed = |app: &str, topic: &str, token: Option<String>| {
            matches!(
                step(3, subscribe(app, topic, token), &bindings()),
                Step::Subscribe { .. }
            )
        };
        assert!(allowed("chat", "open.lobby", None));
        assert!(allowed("chat", "user.u", None));
        assert!(
            allowed("chat", "vip.gold", None),
            "listed in the token's topics"
        );
        let (code, message) = refused(step(3, subscribe("chat", "user.bob", None), &bindings()));
        assert_eq!(code, Code::FORBIDDEN);
        assert_eq!(
            message,
            "subscribe to user.bob refused: no topic rule of the app allows it"
        );
        let (code, message) = refused(step(3, subscribe("chat", "vip.silver", None), &bindings()));
        assert_eq!(code, Code::FORBIDDEN);
        assert!(
            message.ends_with("the token does not grant this topic"),
            "{message}"
        );
        // An app without rules lets clients subscribe to nothing.
        assert_eq!(
            refused(step(3, subscribe("shop", "open.lobby", None), &bindings())).0,
            Code::FORBIDDEN
        );
        // A topic the connection holds (the business subscribed it) may be asked for again,
        // to recover what it missed.
        let holds = |binding: usize, topic: &TopicId| binding == 0 && topic.as_str() == "user.bob";
        let again = super::step(
            3,
            subscribe("chat", "user.bob", None),
            &bindings(),
            &access(),
            holds,
        );
        assert!(matches!(again, Step::Subscribe { .. }));
    }

    #[test]
    fn a_webhook_rule_leaves_the_subscribe_to_the_app_s_answer() {
        let bindings = bindings();
        let sub = subscribe("chat", "ask.room", None);
        let Step::Check {
            binding: 0,
            topic,
            since: None,
        } = step(3, sub.clone(), &bindings)
        else {
            panic!("not a check");
        };
        assert_eq!(topic.as_str(), "ask.room");
        // A topic the connection holds is not asked about again.
        let held = super::step(3, sub, &bindings, &access(), |_, _| true);
        assert!(matches!(held, Step::Subscribe { .. }));

        let access = access();
        let device = DeviceId::from("phone");
        let asked = ask(&access, &bindings[0], &device, ConnId(1), &topic);
        assert!(matches!(asked, Asked::Later(_)), "{asked:?}");
        // An app without an asker answers at once, and refuses.
        let asked = ask(&access, &bindings[1], &device, ConnId(1), &topic);
        assert!(
            matches!(asked, Asked::Known(Verdict::NoWebhook)),
            "{asked:?}"
        );

        assert_eq!(checked(&topic, Verdict::Allowed), Ok(()));
        let refusal = |verdict| match checked(&topic, verdict) {
            Err(Body::Error(e)) => (e.code, e.message),
            other => panic!("{verdict:?}: {other:?}"),
        };
        assert_eq!(
            refusal(Verdict::Refused),
            (
                Code::FORBIDDEN,
                "subscribe to ask.room refused: the app's webhook refused it".into()
            )
        );
        for verdict in [Verdict::Unusable, Verdict::NoWebhook] {
            assert_eq!(refusal(verdict).0, Code::FORBIDDEN, "{verdict:?}");
        }
        // The business could not be asked: the client may try again later.
        let (code, message) = refusal(Verdict::TimedOut);
        assert_eq!(code, Code::UNAVAILABLE);
        assert!(message.contains("permission check timed out"), "{message}");
        assert_eq!(refusal(Verdict::Unreachable).0, Code::UNAVAILABLE);
        let Body::Error(e) = cancelled(&topic) else {
            panic!("not an error");
        };
        assert_eq!(e.code, Code::BAD_REQUEST);
    }

    #[test]
    fn a_subscription_token_opens_its_one_topic_for_its_one_user() {
        let user = UserId::from("u");
        let ttl = Duration::from_secs(60);
        let token = |user: &UserId, topic: &str| {
            auth::mint_subscription(SECRET.as_bytes(), &AppId::from("chat"), user, topic, ttl)
        };
        let sub = |topic: &str, token: String| {
            step(4, subscribe("chat", topic, Some(token)), &bindings())
        };
        assert!(matches!(
            sub("vip.silver", token(&user, "vip.silver")),
            Step::Subscribe { .. }
        ));
        for (topic, token, why) in [
            ("vip.bronze", token(&user, "vip.silver"), "another topic"),
            (
                "vip.silver",
                token(&UserId::from("bob"), "vip.silver"),
                "another user",
            ),
            ("vip.silver", "not.a.jwt".to_owned(), "malformed"),
        ] {
            let (code, message) = refused(sub(topic, token));
            assert_eq!(code, Code::FORBIDDEN);
            assert!(
                message.contains("bad subscription token"),
                "{why}: {message}"
            );
        }
        // A connection token is not a subscription token.
        let connection = auth::mint(SECRET.as_bytes(), &AppId::from("chat"), &user, ttl);
        assert_eq!(refused(sub("vip.silver", connection)).0, Code::FORBIDDEN);
    }

    #[test]
    fn a_refresh_moves_the_expiry_and_only_for_the_same_user() {
        let bindings = bindings();
        let ttl = Duration::from_secs(3600);
        let chat = AppId::from("chat");
        let refresh = |token: String| {
            step(
                5,
                Body::Refresh(Refresh {
                    app: "chat".into(),
                    token,
                }),
                &bindings,
            )
        };
        let same = auth::mint(SECRET.as_bytes(), &chat, &UserId::from("u"), ttl);
        let Step::Reply(Body::Refreshed(done)) = refresh(same) else {
            panic!("not refreshed");
        };
        assert_eq!(done.app, "chat");
        assert!(done.expires_s > tether_core::now_ms() / 1000 + 3000);
        assert_eq!(bindings[0].expires_s(), done.expires_s);

        let other = auth::mint(SECRET.as_bytes(), &chat, &UserId::from("bob"), ttl);
        let (code, message) = refused(refresh(other));
        assert_eq!(code, Code::TOKEN_REFUSED);
        assert!(
            message.ends_with("the token is for another user"),
            "{message}"
        );
        let foreign = auth::mint(b"some-other-secret-0123", &chat, &UserId::from("u"), ttl);
        assert_eq!(refused(refresh(foreign)).0, Code::TOKEN_REFUSED);
        // Refusals leave the expiry as it was.
        assert_eq!(bindings[0].expires_s(), done.expires_s);
    }
}
