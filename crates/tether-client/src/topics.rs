//! Topic subscriptions: what the application asked for, what the business subscribed the user
//! to (server-side subscriptions), the last offset handed to the application per topic, and the
//! requests that keep the server in step across reconnects. No I/O: the connection task feeds
//! [`Topics`] the application's calls and the server's frames, and writes the frames it returns.
//!
//! # Reconnects
//!
//! A new connection holds none of the application's own subscriptions, so each one is sent
//! again as soon as the connection is up, with `since` = the last offset handed to the
//! application (live-only while there is none): the server recovers what the history still
//! holds after it.
//!
//! The server re-applies server-side subscriptions by itself at connect, live-only
//! (`subscribed` with id 0). The client does not subscribe to those on its own (that would
//! subscribe twice on every reconnect): it waits for the server's `subscribed`, and subscribes
//! once more, with `since`, only when that reply starts after the last offset handed over, that
//! is when publications were missed that the history may still hold. A server-side subscription
//! the server does not re-apply during a whole connection (the business removed it meanwhile)
//! is forgotten.
//!
//! # Duplicates and order
//!
//! A publication whose offset is at or below the last one handed over was handed over before
//! (publications are resent around reconnects) and is dropped. While a subscribe with `since`
//! is due or unanswered, publications of its topic are dropped too: they are live ones that
//! got ahead of the recovery (a server-side subscription re-applied first), the recovery
//! resends them in order after its reply, or the reply says `too_old`. Offset 0 publications
//! (qos 0, live-only) are never dropped as duplicates; they are dropped, like any other, once
//! the application has unsubscribed.
//!
//! # Failures
//!
//! A request refused with 4301 (`unavailable`: the server is busy) is sent again after a
//! delay from the reconnect policy's backoff, and at once on a new connection. Other codes
//! (4300 `bad_request`, 4302 `limit`, 4305 `forbidden`: the app's topic rules refuse it) end
//! the subscription: the client forgets it, so a refused topic is never asked for again.
//! Except for the subscribe that recovers what a re-applied server-side subscription missed:
//! the server's subscription stands (the business's subscriptions are not checked against the
//! topic rules; this subscribe is), so a refusal there keeps the topic, live from the
//! re-applied offset, and is reported as a [`Recovery::TooOld`] subscription.
//!
//! # Subscription tokens
//!
//! A subscribe may carry a subscription token (for topics whose rule asks for one). The entry
//! keeps it and every subscribe of the topic sends it, resubscribes after a reconnect
//! included; a later call without a token keeps it. A token that expired by then is refused
//! with 4305 like any other refusal.
//!
//! # Invariants
//!
//! - `in_flight` holds the requests sent on the current connection and not answered yet; it is
//!   emptied when a new connection starts. An entry in [`State::Sent`] has its id there.
//! - An entry the application unsubscribed from (`wanted == false`) lives only until the
//!   server answers its `unsubscribe`, or the connection ends.
//! - Every map here is bounded by the topics the application and the business named: nothing
//!   grows with the number of publications.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tether_proto::{
    Body, Code, ErrorBody, Frame, Publication, Recovery, Subscribe, Subscribed, Unsubscribe,
    Unsubscribed,
};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::{ClientError, Event, ReconnectPolicy};

/// The longest topic name the protocol allows, in bytes.
const MAX_TOPIC_LEN: usize = 128;

/// Checks a topic name the way the server does (1 to 128 bytes, no control characters), so
/// that a bad name fails at the call rather than as an event later.
pub(crate) fn validate_topic(topic: &str) -> Result<(), ClientError> {
    let reason = if topic.is_empty() {
        "must not be empty"
    } else if topic.len() > MAX_TOPIC_LEN {
        "longer than 128 bytes"
    } else if topic.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(ClientError::InvalidTopic {
        topic: topic.to_owned(),
        reason,
    })
}

/// A call of the application, waiting for the connection task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Intent {
    /// Subscribe; `since` is the last offset the application holds, when it says so; `token`
    /// a subscription token, kept for every resubscribe.
    Subscribe {
        since: Option<u64>,
        token: Option<String>,
    },
    Unsubscribe,
}

impl Intent {
    /// What stands when `later` follows `self` for the same topic before the task saw either:
    /// the later call, except that a subscribe keeps an earlier explicit `since` and token.
    pub fn then(self, later: Intent) -> Intent {
        match (self, later) {
            (
                Intent::Subscribe {
                    since: earlier_since,
                    token: earlier_token,
                },
                Intent::Subscribe { since, token },
            ) => Intent::Subscribe {
                since: if since.is_none() && earlier_since.is_some() {
                    earlier_since
                } else {
                    since
                },
                token: token.or(earlier_token),
            },
            (_, later) => later,
        }
    }
}

/// Who made a subscription, which decides what a new connection does with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// The application (`Client::subscribe`): subscribed again on every connection.
    App,
    /// The business, through the API (`subscribed` with id 0): re-applied by the server.
    Server,
}

/// Where a topic's request stands on the current connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A request is to be sent at or after this instant: `subscribe` when the topic is wanted,
    /// else `unsubscribe`.
    Due(Instant),
    /// A request was sent with this id and not answered yet; `since` is the subscribe's.
    Sent { id: u32, since: Option<u64> },
    /// Subscribed and answered: nothing to do.
    Settled,
    /// A server-side subscription on a new connection, until the server re-applies it.
    AwaitServer,
}

#[derive(Debug)]
struct Entry {
    /// False once the application unsubscribed (until the server confirms).
    wanted: bool,
    origin: Origin,
    /// The last offset handed to the application, or the offset its subscription started
    /// from; `since` of the next subscribe.
    last: Option<u64>,
    state: State,
    /// Delays between retries after 4301; reset by a success.
    backoff: Backoff,
    /// The subscription token sent with every subscribe of the topic.
    token: Option<String>,
    /// The offset at which the server re-applied the business's subscription on this
    /// connection, while the subscribe that recovers the gap before it is due or unanswered.
    reapplied: Option<u64>,
}

impl Entry {
    /// Whether a subscribe with `since` is due or unanswered: publications arriving meanwhile
    /// come again in its recovery.
    fn recovering(&self) -> bool {
        self.wanted
            && match self.state {
                State::Due(_) => self.last.is_some(),
                State::Sent { since, .. } => since.is_some(),
                State::Settled | State::AwaitServer => false,
            }
    }
}

/// The client's topics. See the module docs for the rules.
#[derive(Debug)]
pub(crate) struct Topics {
    /// app -> topic -> entry (ordered, so requests go out in a stable order).
    entries: BTreeMap<String, BTreeMap<String, Entry>>,
    /// Requests sent on this connection and not answered yet: id -> (app, topic).
    in_flight: HashMap<u32, (String, String)>,
    /// The retry schedule after 4301, cloned into each new entry.
    backoff: Backoff,
}

impl Topics {
    pub fn new(retry: &ReconnectPolicy) -> Topics {
        Topics {
            entries: BTreeMap::new(),
            in_flight: HashMap::new(),
            backoff: Backoff::new(retry),
        }
    }

    fn get_mut(&mut self, app: &str, topic: &str) -> Option<&mut Entry> {
        self.entries.get_mut(app)?.get_mut(topic)
    }

    fn remove(&mut self, app: &str, topic: &str) {
        if let Some(topics) = self.entries.get_mut(app) {
            topics.remove(topic);
            if topics.is_empty() {
                self.entries.remove(app);
            }
        }
    }

    /// Applies a call of the application. Every call sends a request (answered by an event),
    /// except a call that repeats the one still unanswered.
    pub fn apply(&mut self, app: String, topic: String, intent: Intent, now: Instant) {
        let backoff = self.backoff.clone();
        let entry = self
            .entries
            .entry(app)
            .or_default()
            .entry(topic)
            .or_insert_with(|| Entry {
                wanted: !matches!(intent, Intent::Unsubscribe),
                origin: Origin::App,
                last: None,
                state: State::Due(now),
                backoff,
                token: None,
                reapplied: None,
            });
        let wanted = matches!(intent, Intent::Subscribe { .. });
        // The same request is pending already (due, retrying or unanswered), and the call
        // brings no new `since` or token: its answer serves this call too.
        let repeat = entry.wanted == wanted
            && matches!(entry.state, State::Sent { .. } | State::Due(_))
            && !matches!(
                intent,
                Intent::Subscribe { since: Some(_), .. } | Intent::Subscribe { token: Some(_), .. }
            );
        entry.wanted = wanted;
        if let Intent::Subscribe { since, token } = intent {
            entry.origin = Origin::App;
            if since.is_some() {
                entry.last = since;
            }
            if token.is_some() {
                entry.token = token;
            }
        }
        if !repeat {
            entry.state = State::Due(now);
        }
    }

    /// A new connection is up: nothing of the previous one holds any more.
    pub fn connection_started(&mut self, now: Instant) {
        self.in_flight.clear();
        for topics in self.entries.values_mut() {
            topics.retain(|_, e| {
                e.reapplied = None;
                if !e.wanted {
                    // The new connection does not have it (or the server re-applies it: the
                    // business's subscriptions outlive an unsubscribe of one connection).
                    return false;
                }
                match e.origin {
                    Origin::App => e.state = State::Due(now),
                    // Not re-applied during a whole connection: the business removed it.
                    Origin::Server if e.state == State::AwaitServer => return false,
                    Origin::Server => e.state = State::AwaitServer,
                }
                true
            });
        }
        self.entries.retain(|_, topics| !topics.is_empty());
    }

    /// The earliest instant a request is due (retries wait; new requests are due at once).
    pub fn next_due(&self) -> Option<Instant> {
        self.entries
            .values()
            .flat_map(BTreeMap::values)
            .filter_map(|e| match e.state {
                State::Due(at) => Some(at),
                _ => None,
            })
            .min()
    }

    /// The requests due by `now`, each with an id from `next_id`, marked as sent.
    pub fn due(&mut self, now: Instant, next_id: &mut impl FnMut() -> u32) -> Vec<Frame> {
        let mut frames = Vec::new();
        for (app, topics) in &mut self.entries {
            for (topic, e) in topics.iter_mut() {
                match e.state {
                    State::Due(at) if at <= now => {}
                    _ => continue,
                }
                let id = next_id();
                let (body, since): (Body, _) = if e.wanted {
                    let subscribe = Subscribe {
                        app: app.clone(),
                        topic: topic.clone(),
                        since: e.last,
                        token: e.token.clone(),
                    };
                    (subscribe.into(), e.last)
                } else {
                    let unsubscribe = Unsubscribe {
                        app: app.clone(),
                        topic: topic.clone(),
                    };
                    (unsubscribe.into(), None)
                };
                e.state = State::Sent { id, since };
                self.in_flight.insert(id, (app.clone(), topic.clone()));
                frames.push(Frame::new(id, body));
            }
        }
        frames
    }

    /// Whether to hand `p` to the application; records its offset when so.
    pub fn publication(&mut self, p: &Publication) -> bool {
        let Some(e) = self.get_mut(&p.app, &p.topic) else {
            return false; // unsubscribed (the server's confirmation may still be on its way)
        };
        if !e.wanted {
            return false;
        }
        if p.offset == 0 {
            return true;
        }
        if e.recovering() || e.last.is_some_and(|last| p.offset <= last) {
            return false;
        }
        e.last = Some(p.offset);
        true
    }

    /// Handles `subscribed` (request id `id`); the event for the application, if any.
    pub fn subscribed(&mut self, id: u32, s: Subscribed, now: Instant) -> Option<Event> {
        if id != 0 {
            // A reply to one of ours. Replies to requests superseded since are dropped.
            self.in_flight.remove(&id)?;
            let e = self.get_mut(&s.app, &s.topic)?;
            let State::Sent { id: sent, since } = e.state else {
                return None;
            };
            if sent != id || !e.wanted {
                return None;
            }
            e.state = State::Settled;
            e.reapplied = None;
            e.backoff.reset();
            // After a complete recovery the recovered publications follow and move `last`.
            // Otherwise the subscription starts at `offset`, even below `last` (a history that
            // started over).
            if s.recovery != Recovery::Complete {
                e.last = Some(s.offset);
            }
            let server_side = e.origin == Origin::Server;
            return Some(subscribed_event(s, since, server_side));
        }
        // The business subscribed the user, now or (re-applied) at connect.
        let Some(e) = self.get_mut(&s.app, &s.topic) else {
            let entry = Entry {
                wanted: true,
                origin: Origin::Server,
                last: Some(s.offset),
                state: State::Settled,
                backoff: self.backoff.clone(),
                token: None,
                reapplied: None,
            };
            self.entries
                .entry(s.app.clone())
                .or_default()
                .insert(s.topic.clone(), entry);
            return Some(subscribed_event(s, None, true));
        };
        if !e.wanted || matches!(e.state, State::Sent { .. }) {
            // Our own request follows it (an unsubscribe, or a subscribe whose reply is the
            // one the application sees).
            return None;
        }
        if e.last.is_some_and(|last| last < s.offset) {
            // Publications were missed; recover them (the reply to that is the event).
            e.state = State::Due(now);
            e.reapplied = Some(s.offset);
            return None;
        }
        e.state = State::Settled;
        e.last = Some(s.offset);
        let server_side = e.origin == Origin::Server;
        Some(subscribed_event(s, None, server_side))
    }

    /// Handles `unsubscribed` (request id `id`); the event for the application, if any.
    pub fn unsubscribed(&mut self, id: u32, u: Unsubscribed) -> Option<Event> {
        if id != 0 {
            self.in_flight.remove(&id)?;
            let e = self.get_mut(&u.app, &u.topic)?;
            if e.wanted || !matches!(e.state, State::Sent { id: sent, .. } if sent == id) {
                return None; // subscribed again since
            }
            self.remove(&u.app, &u.topic);
            return Some(Event::Unsubscribed {
                app: u.app,
                topic: u.topic,
                server_side: false,
            });
        }
        // The business unsubscribed the user: the connection is out of the topic, unless a
        // subscribe of ours follows.
        let subscribing = self
            .get_mut(&u.app, &u.topic)
            .is_some_and(|e| e.wanted && matches!(e.state, State::Sent { .. }));
        if !subscribing {
            self.remove(&u.app, &u.topic);
        }
        Some(Event::Unsubscribed {
            app: u.app,
            topic: u.topic,
            server_side: true,
        })
    }

    /// Handles a request error. `Err` hands back an error that answers no topic request.
    pub fn failed(
        &mut self,
        id: u32,
        error: ErrorBody,
        now: Instant,
    ) -> Result<Option<Event>, ErrorBody> {
        let Some((app, topic)) = self.in_flight.remove(&id) else {
            return Err(error);
        };
        let Some(e) = self.get_mut(&app, &topic) else {
            return Ok(None);
        };
        if !matches!(e.state, State::Sent { id: sent, .. } if sent == id) {
            return Ok(None); // superseded
        }
        let retrying = error.code == Code::UNAVAILABLE;
        if let (false, true, Some(offset)) = (retrying, e.wanted, e.reapplied.take()) {
            // Only the recovery was refused: the server's subscription stands, live from
            // `offset`, and what came before it is lost to this client.
            let since = e.last.replace(offset);
            e.state = State::Settled;
            return Ok(Some(Event::Subscribed {
                app,
                topic,
                offset,
                recovery: Recovery::TooOld,
                since,
                server_side: e.origin == Origin::Server,
            }));
        }
        let wanted = e.wanted;
        if retrying {
            let delay = e.backoff.next_delay(Duration::ZERO, &mut rand::rng());
            e.state = State::Due(now + delay);
        } else {
            self.remove(&app, &topic);
        }
        Ok(match (wanted, retrying) {
            (true, _) => Some(Event::SubscribeFailed {
                app,
                topic,
                code: error.code,
                message: error.message,
                retrying,
            }),
            (false, true) => None,
            (false, false) => Some(Event::Error {
                code: error.code,
                message: format!("unsubscribe from {app}/{topic}: {}", error.message),
            }),
        })
    }
}

fn subscribed_event(s: Subscribed, since: Option<u64>, server_side: bool) -> Event {
    Event::Subscribed {
        app: s.app,
        topic: s.topic,
        offset: s.offset,
        recovery: s.recovery,
        since,
        server_side,
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use tether_proto::PayloadKind;

    use super::*;

    fn topics() -> Topics {
        Topics::new(&ReconnectPolicy {
            enabled: true,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(1),
        })
    }

    /// Ids handed to requests, counting from 1.
    struct Ids(u32);

    impl Ids {
        /// The frames due at `now`, as (id, body).
        fn due(&mut self, t: &mut Topics, now: Instant) -> Vec<(u32, Body)> {
            let frames = t.due(now, &mut || {
                self.0 += 1;
                self.0
            });
            frames.into_iter().map(|f| (f.id, f.body)).collect()
        }

        /// The one frame due now, which must be a subscribe of `topic` with `since`; its id.
        fn subscribe(&mut self, t: &mut Topics, topic: &str, since: Option<u64>) -> u32 {
            match &self.due(t, Instant::now())[..] {
                [(id, Body::Subscribe(s))] => {
                    assert_eq!((s.app.as_str(), s.topic.as_str()), ("demo", topic));
                    assert_eq!(s.since, since, "since of {topic}");
                    *id
                }
                other => panic!("expected one subscribe to {topic}, got {other:?}"),
            }
        }
    }

    fn call(t: &mut Topics, topic: &str, intent: Intent) {
        t.apply("demo".into(), topic.into(), intent, Instant::now());
    }

    const SUBSCRIBE: Intent = Intent::Subscribe {
        since: None,
        token: None,
    };

    fn since(offset: u64) -> Intent {
        Intent::Subscribe {
            since: Some(offset),
            token: None,
        }
    }

    fn with_token(token: &str) -> Intent {
        Intent::Subscribe {
            since: None,
            token: Some(token.into()),
        }
    }

    /// No publication handed over.
    const NONE: [u64; 0] = [];

    fn subscribed(topic: &str, offset: u64, recovery: Recovery) -> Subscribed {
        Subscribed {
            app: "demo".into(),
            topic: topic.into(),
            offset,
            recovery,
        }
    }

    fn unsubscribed(topic: &str) -> Unsubscribed {
        Unsubscribed {
            app: "demo".into(),
            topic: topic.into(),
        }
    }

    /// The offsets of `offsets` handed to the application.
    fn pass(t: &mut Topics, topic: &str, offsets: &[u64]) -> Vec<u64> {
        offsets
            .iter()
            .copied()
            .filter(|&offset| {
                t.publication(&Publication {
                    app: "demo".into(),
                    topic: topic.into(),
                    offset,
                    msg_id: 1000 + offset,
                    created_ms: 0,
                    kind: PayloadKind::Binary,
                    payload: Bytes::new(),
                })
            })
            .collect()
    }

    fn event(
        topic: &str,
        offset: u64,
        recovery: Recovery,
        since: Option<u64>,
        server_side: bool,
    ) -> Option<Event> {
        Some(Event::Subscribed {
            app: "demo".into(),
            topic: topic.into(),
            offset,
            recovery,
            since,
            server_side,
        })
    }

    fn error(code: Code) -> ErrorBody {
        ErrorBody {
            code,
            message: code.label().into(),
        }
    }

    #[test]
    fn resubscribes_after_a_reconnect_from_the_last_offset_handed_over() {
        let (mut t, mut ids) = (topics(), Ids(0));
        call(&mut t, "room", SUBSCRIBE);
        let id = ids.subscribe(&mut t, "room", None);
        let reply = t.subscribed(id, subscribed("room", 10, Recovery::Live), Instant::now());
        assert_eq!(reply, event("room", 10, Recovery::Live, None, false));
        assert_eq!(
            pass(&mut t, "room", &[11, 12, 12, 11, 0, 0, 13]),
            [11, 12, 0, 0, 13]
        );

        t.connection_started(Instant::now());
        let id = ids.subscribe(&mut t, "room", Some(13));
        // Before the reply: live ones that the recovery resends; offset 0 is never held back.
        assert_eq!(pass(&mut t, "room", &[14, 0]), [0]);
        let reply = t.subscribed(
            id,
            subscribed("room", 15, Recovery::Complete),
            Instant::now(),
        );
        assert_eq!(
            reply,
            event("room", 15, Recovery::Complete, Some(13), false)
        );
        assert_eq!(pass(&mut t, "room", &[14, 15, 15, 16]), [14, 15, 16]);

        // A connection lost before the reply: the next one asks again from the same offset.
        t.connection_started(Instant::now());
        let stale = ids.subscribe(&mut t, "room", Some(16));
        t.connection_started(Instant::now());
        let id = ids.subscribe(&mut t, "room", Some(16));
        let late = t.subscribed(
            stale,
            subscribed("room", 16, Recovery::Complete),
            Instant::now(),
        );
        assert_eq!(late, None, "a reply from an earlier connection's id");
        assert!(
            t.subscribed(
                id,
                subscribed("room", 16, Recovery::Complete),
                Instant::now()
            )
            .is_some()
        );
    }

    #[test]
    fn a_live_subscription_resumes_from_where_it_started() {
        let (mut t, mut ids) = (topics(), Ids(0));
        call(&mut t, "room", SUBSCRIBE);
        let id = ids.subscribe(&mut t, "room", None);
        t.subscribed(id, subscribed("room", 5, Recovery::Live), Instant::now());
        t.connection_started(Instant::now());
        ids.subscribe(&mut t, "room", Some(5));
    }

    #[test]
    fn too_old_restarts_from_the_reply_s_offset() {
        let (mut t, mut ids) = (topics(), Ids(0));
        call(&mut t, "room", since(13));
        let id = ids.subscribe(&mut t, "room", Some(13));
        // The history started over (a node without a persistent store restarted).
        let reply = t.subscribed(id, subscribed("room", 3, Recovery::TooOld), Instant::now());
        assert_eq!(reply, event("room", 3, Recovery::TooOld, Some(13), false));
        assert_eq!(pass(&mut t, "room", &[3, 4, 5]), [4, 5]);
    }

    #[test]
    fn server_side_subscriptions_are_recovered_without_subscribing_twice() {
        let (mut t, mut ids) = (topics(), Ids(0));
        let reply = t.subscribed(0, subscribed("news", 3, Recovery::Live), Instant::now());
        assert_eq!(reply, event("news", 3, Recovery::Live, None, true));
        assert_eq!(ids.due(&mut t, Instant::now()), []);
        assert_eq!(pass(&mut t, "news", &[4, 5]), [4, 5]);

        // Reconnect, nothing missed: the server's own re-subscription is enough.
        t.connection_started(Instant::now());
        assert_eq!(ids.due(&mut t, Instant::now()), []);
        let reply = t.subscribed(0, subscribed("news", 5, Recovery::Live), Instant::now());
        assert_eq!(reply, event("news", 5, Recovery::Live, None, true));
        assert_eq!(ids.due(&mut t, Instant::now()), []);
        assert_eq!(pass(&mut t, "news", &[6]), [6]);

        // Reconnect after 7..=9 were published: one subscribe recovers them.
        t.connection_started(Instant::now());
        assert_eq!(ids.due(&mut t, Instant::now()), []);
        let reapplied = t.subscribed(0, subscribed("news", 9, Recovery::Live), Instant::now());
        assert_eq!(
            reapplied, None,
            "the recovering subscribe's reply is the event"
        );
        let id = ids.subscribe(&mut t, "news", Some(6));
        assert_eq!(pass(&mut t, "news", &[10]), NONE, "ahead of the recovery");
        let reply = t.subscribed(
            id,
            subscribed("news", 10, Recovery::Complete),
            Instant::now(),
        );
        assert_eq!(reply, event("news", 10, Recovery::Complete, Some(6), true));
        assert_eq!(pass(&mut t, "news", &[7, 8, 9, 10, 11]), [7, 8, 9, 10, 11]);
    }

    #[test]
    fn a_server_side_subscription_not_reapplied_for_a_whole_connection_is_forgotten() {
        let mut t = topics();
        t.subscribed(0, subscribed("news", 3, Recovery::Live), Instant::now());
        t.connection_started(Instant::now());
        assert_eq!(
            pass(&mut t, "news", &[4]),
            [4],
            "kept while it may come back"
        );
        t.connection_started(Instant::now());
        assert_eq!(pass(&mut t, "news", &[5]), NONE, "forgotten");
    }

    #[test]
    fn the_app_s_resubscribe_absorbs_the_server_s_reapplication() {
        let (mut t, mut ids) = (topics(), Ids(0));
        call(&mut t, "room", SUBSCRIBE);
        let id = ids.subscribe(&mut t, "room", None);
        t.subscribed(id, subscribed("room", 3, Recovery::Live), Instant::now());
        t.connection_started(Instant::now());
        let id = ids.subscribe(&mut t, "room", Some(3));
        // The business subscribed the user too; its re-application comes first.
        let reapplied = t.subscribed(0, subscribed("room", 5, Recovery::Live), Instant::now());
        assert_eq!(reapplied, None);
        assert_eq!(pass(&mut t, "room", &[4, 5]), NONE);
        assert_eq!(ids.due(&mut t, Instant::now()), [], "no second subscribe");
        let reply = t.subscribed(
            id,
            subscribed("room", 5, Recovery::Complete),
            Instant::now(),
        );
        assert_eq!(reply, event("room", 5, Recovery::Complete, Some(3), false));
        assert_eq!(pass(&mut t, "room", &[4, 5]), [4, 5]);
    }

    #[test]
    fn a_busy_server_gets_the_subscribe_again_other_refusals_forget_it() {
        let (mut t, mut ids) = (topics(), Ids(0));
        for topic in ["a", "b"] {
            call(&mut t, topic, SUBSCRIBE);
        }
        let now = Instant::now();
        let sent = ids.due(&mut t, now);
        let [(id_a, _), (id_b, _)] = sent[..] else {
            panic!("{sent:?}");
        };
        let failed = t
            .failed(id_a, error(Code::LIMIT), now)
            .expect("a topic request");
        assert_eq!(
            failed,
            Some(Event::SubscribeFailed {
                app: "demo".into(),
                topic: "a".into(),
                code: Code::LIMIT,
                message: "limit".into(),
                retrying: false,
            })
        );
        let failed = t
            .failed(id_b, error(Code::UNAVAILABLE), now)
            .expect("a topic request");
        assert!(
            matches!(failed, Some(Event::SubscribeFailed { retrying: true, .. })),
            "{failed:?}"
        );
        let retry_at = t.next_due().expect("a retry");
        assert!(retry_at >= now && retry_at < now + Duration::from_millis(100));
        let retried = ids.due(&mut t, retry_at);
        assert!(matches!(&retried[..], [(_, Body::Subscribe(s))] if s.topic == "b"));

        // Not an answer to a topic request: handed back.
        assert!(t.failed(999, error(Code::BAD_REQUEST), now).is_err());

        // Only "b" is kept.
        t.connection_started(now);
        ids.subscribe(&mut t, "b", None);
    }

    #[test]
    fn unsubscribing_drops_publications_and_forgets_the_topic() {
        let (mut t, mut ids) = (topics(), Ids(0));
        call(&mut t, "room", SUBSCRIBE);
        let id = ids.subscribe(&mut t, "room", None);
        t.subscribed(id, subscribed("room", 1, Recovery::Live), Instant::now());
        call(&mut t, "room", Intent::Unsubscribe);
        let sent = ids.due(&mut t, Instant::now());
        let [(id, Body::Unsubscribe(_))] = sent[..] else {
            panic!("{sent:?}");
        };
        assert_eq!(pass(&mut t, "room", &[2, 0]), NONE, "still on the way");
        let reply = t.unsubscribed(id, unsubscribed("room"));
        assert!(matches!(
            reply,
            Some(Event::Unsubscribed {
                server_side: false,
                ..
            })
        ));
        t.connection_started(Instant::now());
        assert_eq!(ids.due(&mut t, Instant::now()), []);
    }

    #[test]
    fn replies_to_superseded_requests_are_dropped() {
        let (mut t, mut ids) = (topics(), Ids(0));
        call(&mut t, "room", SUBSCRIBE);
        let first = ids.subscribe(&mut t, "room", None);
        call(&mut t, "room", Intent::Unsubscribe);
        let [(leave, _)] = ids.due(&mut t, Instant::now())[..] else {
            panic!("one unsubscribe");
        };
        call(&mut t, "room", SUBSCRIBE);
        let again = ids.subscribe(&mut t, "room", None);
        let now = Instant::now();
        assert_eq!(
            t.subscribed(first, subscribed("room", 0, Recovery::Live), now),
            None
        );
        assert_eq!(t.unsubscribed(leave, unsubscribed("room")), None);
        assert!(
            t.subscribed(again, subscribed("room", 0, Recovery::Live), now)
                .is_some()
        );
        assert_eq!(pass(&mut t, "room", &[1]), [1]);
    }

    #[test]
    fn the_business_unsubscribing_the_user_ends_the_topic() {
        let (mut t, mut ids) = (topics(), Ids(0));
        call(&mut t, "room", SUBSCRIBE);
        let id = ids.subscribe(&mut t, "room", None);
        t.subscribed(id, subscribed("room", 0, Recovery::Live), Instant::now());
        let reply = t.unsubscribed(0, unsubscribed("room"));
        assert!(matches!(
            reply,
            Some(Event::Unsubscribed {
                server_side: true,
                ..
            })
        ));
        assert_eq!(pass(&mut t, "room", &[1]), NONE);
        t.connection_started(Instant::now());
        assert_eq!(ids.due(&mut t, Instant::now()), []);
    }

    #[test]
    fn repeated_calls_send_one_request() {
        let (mut t, mut ids) = (topics(), Ids(0));
        call(&mut t, "room", SUBSCRIBE);
        call(&mut t, "room", SUBSCRIBE);
        ids.subscribe(&mut t, "room", None);
        call(&mut t, "room", SUBSCRIBE);
        assert_eq!(
            ids.due(&mut t, Instant::now()),
            [],
            "answered by the pending reply"
        );
        call(&mut t, "room", since(4));
        ids.subscribe(&mut t, "room", Some(4));

        let explicit = since(4);
        assert_eq!(explicit.clone().then(SUBSCRIBE), explicit);
        assert_eq!(SUBSCRIBE.then(explicit.clone()), explicit);
        assert_eq!(explicit.then(Intent::Unsubscribe), Intent::Unsubscribe);
        assert_eq!(
            with_token("t").then(since(4)),
            Intent::Subscribe {
                since: Some(4),
                token: Some("t".into())
            }
        );
        assert_eq!(with_token("t").then(with_token("u")), with_token("u"));
        assert_eq!(Intent::Unsubscribe.then(SUBSCRIBE), SUBSCRIBE);
    }

    /// The subscription token of the one subscribe due now.
    fn token_sent(ids: &mut Ids, t: &mut Topics) -> (u32, Option<String>) {
        match ids.due(t, Instant::now()).pop() {
            Some((id, Body::Subscribe(s))) => (id, s.token),
            other => panic!("expected a subscribe, got {other:?}"),
        }
    }

    #[test]
    fn a_subscription_token_is_sent_again_after_every_reconnect() {
        let (mut t, mut ids) = (topics(), Ids(0));
        call(&mut t, "vip", with_token("sub-token"));
        let (id, token) = token_sent(&mut ids, &mut t);
        assert_eq!(token.as_deref(), Some("sub-token"));
        t.subscribed(id, subscribed("vip", 2, Recovery::Live), Instant::now());
        t.connection_started(Instant::now());
        let (id, token) = token_sent(&mut ids, &mut t);
        assert_eq!(token.as_deref(), Some("sub-token"), "resubscribe");
        t.subscribed(id, subscribed("vip", 2, Recovery::Complete), Instant::now());
        // A plain subscribe of the topic keeps the token.
        call(&mut t, "vip", SUBSCRIBE);
        assert_eq!(token_sent(&mut ids, &mut t).1.as_deref(), Some("sub-token"));
    }

    #[test]
    fn a_forbidden_topic_is_reported_and_never_asked_for_again() {
        let (mut t, mut ids) = (topics(), Ids(0));
        call(&mut t, "vip", SUBSCRIBE);
        let id = ids.subscribe(&mut t, "vip", None);
        let now = Instant::now();
        let failed = t
            .failed(id, error(Code::FORBIDDEN), now)
            .expect("a topic request");
        assert_eq!(
            failed,
            Some(Event::SubscribeFailed {
                app: "demo".into(),
                topic: "vip".into(),
                code: Code::FORBIDDEN,
                message: "forbidden".into(),
                retrying: false,
            })
        );
        assert_eq!(t.next_due(), None);
        t.connection_started(now);
        assert_eq!(ids.due(&mut t, now + Duration::from_secs(60)), []);
    }

    #[test]
    fn a_refused_recovery_keeps_a_reapplied_server_side_subscription() {
        let (mut t, mut ids) = (topics(), Ids(0));
        t.subscribed(0, subscribed("vip.news", 3, Recovery::Live), Instant::now());
        assert_eq!(pass(&mut t, "vip.news", &[4]), [4]);
        t.connection_started(Instant::now());
        // Re-applied at 9: the client asks for 5..=9, and a `token` rule refuses it.
        let reapplied = t.subscribed(0, subscribed("vip.news", 9, Recovery::Live), Instant::now());
        assert_eq!(reapplied, None);
        let id = ids.subscribe(&mut t, "vip.news", Some(4));
        let now = Instant::now();
        let failed = t
            .failed(id, error(Code::FORBIDDEN), now)
            .expect("a topic request");
        assert_eq!(
            failed,
            event("vip.news", 9, Recovery::TooOld, Some(4), true)
        );
        assert_eq!(
            pass(&mut t, "vip.news", &[9, 10]),
            [10],
            "live after the re-application"
        );
        assert_eq!(ids.due(&mut t, now), [], "not asked again");
    }

    #[test]
    fn topic_names_are_checked_like_the_server_does() {
        assert!(validate_topic("room-1").is_ok());
        assert!(validate_topic(&"x".repeat(128)).is_ok());
        for bad in ["", "a\nb", &"x".repeat(129)] {
            assert!(
                matches!(validate_topic(bad), Err(ClientError::InvalidTopic { .. })),
                "{bad:?}"
            );
        }
    }
}
