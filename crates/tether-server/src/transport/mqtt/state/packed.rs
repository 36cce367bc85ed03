//! A parked connection's state, packed into one byte string.
//!
//! A parked MQTT connection keeps its translation state beside what a connection of tether's
//! own protocol keeps (its handle and waker). Held as a [`State`], that is four allocations
//! for a device subscribed to one topic (the state, its app list, its topic list and the
//! topic's name: about 330 bytes with glibc's chunk headers and rounding), which put an idle
//! MQTT connection 0.3-0.4 KiB above a TCP one and above Mosquitto's (`docs/benchmarks.md`).
//! Packed, the same state is one allocation of a few tens of bytes: counters as LEB128
//! varints, flags as bits, names as length-prefixed bytes. An app is packed as its name, and
//! comes back as the connection's binding's own id when it resumes (or as a new one, should
//! the binding be gone): the parked state holds no reference to it.
//!
//! Only an idle state packs: nothing under way (no window, no waiting request). A persistent
//! session and a will are handles (to the store, to the webhook) rather than data: they are
//! kept beside the bytes as they are ([`Beside`]), and what dropping a state does with them
//! (save the session, send the will, `will.rs`) still happens when a parked connection ends
//! without resuming (its clean-up drops its rest): the state is unpacked and dropped then. A
//! state without them drops as nothing, so its bytes are simply freed. Packing and unpacking
//! happen once per park and resume, beside a task spawn and two epoll updates that cost far
//! more.

use super::*;
use crate::link::Binding;

/// What a parked connection keeps of its translation state.
#[derive(Debug)]
pub enum ParkedState {
    /// An idle state without a persistent session or a will: see the module's doc.
    Packed(Box<[u8]>),
    /// An idle state with a persistent session or a will.
    Beside(Box<Beside>),
    /// A state with something under way, as it is.
    Whole(Box<State>),
}

/// A packed state, and its persistent session and will beside it.
#[derive(Debug)]
pub struct Beside {
    bytes: Box<[u8]>,
    kept: Option<Box<session::Kept>>,
    will: Option<Box<will::Left>>,
}

impl Drop for Beside {
    /// A parked connection that ends without resuming ends its session as a running one
    /// does: its state, unpacked and dropped, saves the session and sends the will.
    fn drop(&mut self) {
        if self.kept.is_none() && self.will.is_none() {
            return;
        }
        if let Some(mut state) = unpacked(&self.bytes, &[]) {
            state.kept = self.kept.take();
            state.will = self.will.take();
        }
    }
}

impl ParkedState {
    /// Packs `state` when nothing is under way; otherwise keeps it whole, its lists without
    /// spare room. (A packed state's lists are dropped, so they are not shrunk first.)
    pub fn park(mut state: Box<State>) -> Self {
        if state.pending.as_deref().is_some_and(|p| !p.is_empty()) {
            state.compact();
            return ParkedState::Whole(state);
        }
        let mut out = Vec::with_capacity(64);
        state.pack(&mut out);
        // Copied into an allocation of its own size rather than shrunk in place, which would
        // leave a hole behind it in the heap for as long as the connection stays parked.
        let bytes = Box::from(out.as_slice());
        // Taken out of `state`, which then has no session to save and no will to send:
        // dropping it does nothing else.
        match (state.kept.take(), state.will.take()) {
            (None, None) => ParkedState::Packed(bytes),
            (kept, will) => ParkedState::Beside(Box::new(Beside { bytes, kept, will })),
        }
    }

    /// The state again, sharing the app ids of `bindings` (the connection's). `None` when it
    /// does not unpack, which only a bug can cause (the bytes are this module's own): the
    /// connection is then ended rather than served on a state that is not its own.
    pub fn resume(self, bindings: &[Binding]) -> Option<Box<State>> {
        match self {
            ParkedState::Whole(state) => Some(state),
            ParkedState::Packed(bytes) => unpacked(&bytes, bindings),
            ParkedState::Beside(mut beside) => {
                // Out of `beside` first, whose drop then has nothing left to end.
                let (kept, will) = (beside.kept.take(), beside.will.take());
                let mut state = unpacked(&beside.bytes, bindings)?;
                state.kept = kept;
                state.will = will;
                Some(state)
            }
        }
    }
}

/// The state packed in `bytes`, or `None` (logged).
fn unpacked(bytes: &[u8], bindings: &[Binding]) -> Option<Box<State>> {
    let state = State::unpack(bytes, bindings).map(Box::new);
    if state.is_none() {
        tracing::error!("mqtt: a parked connection's state does not unpack");
    }
    state
}

// Flags of the state's first byte (its version in the two lowest bits).
const CONNECTED: u8 = 1 << 2;
const CLOSING: u8 = 1 << 3;
const PROBLEM_INFO: u8 = 1 << 4;
const CLEAN_START: u8 = 1 << 5;
const EXPIRY_LOWERED: u8 = 1 << 6;
const EXPIRING: u8 = 1 << 7;
// An app's flags (its inbox in the two lowest bits).
const SEQ_FORM: u8 = 1 << 2;
const SYNC_GOT: u8 = 1 << 3;
// A topic's flags (its QoS in the two lowest bits).
const OWN: u8 = 1 << 2;
const GAP: u8 = 1 << 3;
const RECOVERING: u8 = 1 << 4;
const NAMED: u8 = 1 << 5;
// The state's second byte.
const SYNCING: u8 = 1;
const ASSIGNED: u8 = 1 << 1;

impl State {
    /// Appends the state's fields: all but the persistent session and the will, which
    /// [`ParkedState::park`] keeps beside the bytes, and what is under way, with which it
    /// keeps the state whole.
    fn pack(&self, out: &mut Vec<u8>) {
        let version = match self.version {
            None => 0,
            Some(Version::V311) => 1,
            Some(Version::V5) => 2,
        };
        let flags = [
            (self.connected, CONNECTED),
            (self.closing, CLOSING),
            (self.problem_info, PROBLEM_INFO),
            (self.clean_start, CLEAN_START),
            (self.expiry_lowered, EXPIRY_LOWERED),
            (self.expiring, EXPIRING),
        ];
        out.push(bits(version, &flags));
        out.push(bits(
            0,
            &[(self.syncing, SYNCING), (self.assigned.is_some(), ASSIGNED)],
        ));
        for n in [
            u64::from(self.session_expiry),
            u64::from(self.next_packet_id),
            u64::from(self.next_req),
            u64::from(self.receive_max),
            // Most devices set no maximum (`u32::MAX`): one byte instead of five.
            u64::from(u32::MAX - self.max_packet),
            self.unknown_acks,
        ] {
            varint(out, n);
        }
        if let Some(assigned) = &self.assigned {
            string(out, assigned);
        }
        varint(out, self.apps.len() as u64);
        for a in &self.apps {
            let inbox = match a.inbox {
                Inbox::Off => 0,
                Inbox::Live => 1,
                Inbox::Durable => 2,
            };
            out.push(bits(
                inbox,
                &[(a.seq_form, SEQ_FORM), (a.sync_got, SYNC_GOT)],
            ));
            string(out, a.app.as_str());
            for n in [a.delivered, a.gap_lo, a.gap_hi, u64::from(a.sync_req)] {
                varint(out, n);
            }
        }
        varint(out, self.topics.len() as u64);
        for t in &self.topics {
            let flags = [
                (t.own, OWN),
                (t.gap, GAP),
                (t.recovering, RECOVERING),
                (t.name.is_some(), NAMED),
            ];
            out.push(bits(t.qos as u8, &flags));
            out.push(t.app);
            for n in [u64::from(t.id), t.offset, t.acked] {
                varint(out, n);
            }
            string(out, &t.topic);
            if let Some(name) = &t.name {
                string(out, name);
            }
        }
        varint(out, self.reply_subs.len() as u64);
        for r in &self.reply_subs {
            string(out, r);
        }
    }

    /// The state [`State::pack`] packed into `bytes`; `None` if they are not what it wrote.
    fn unpack(bytes: &[u8], bindings: &[Binding]) -> Option<State> {
        let mut r = Reader(bytes);
        let mut s = State::default();
        let first = r.byte()?;
        s.version = match first & 3 {
            0 => None,
            1 => Some(Version::V311),
            2 => Some(Version::V5),
            _ => return None,
        };
        s.connected = first & CONNECTED != 0;
        s.closing = first & CLOSING != 0;
        s.problem_info = first & PROBLEM_INFO != 0;
        s.clean_start = first & CLEAN_START != 0;
        s.expiry_lowered = first & EXPIRY_LOWERED != 0;
        s.expiring = first & EXPIRING != 0;
        let second = r.byte()?;
        s.syncing = second & SYNCING != 0;
        s.session_expiry = r.number()?;
        s.next_packet_id = r.number()?;
        s.next_req = r.number()?;
        s.receive_max = r.number()?;
        s.max_packet = u32::MAX.checked_sub(r.number()?)?;
        s.unknown_acks = r.varint()?;
        if second & ASSIGNED != 0 {
            s.assigned = Some(r.str()?.to_string());
        }
        let apps = r.count()?;
        s.apps.reserve_exact(apps);
        for _ in 0..apps {
            let flags = r.byte()?;
            let name = r.str()?;
            let app = match bindings.iter().find(|b| b.app.as_str() == name) {
                Some(b) => b.app.clone(),
                None => AppId::new(name),
            };
            let mut a = AppInbox::new(app);
            a.inbox = match flags & 3 {
                0 => Inbox::Off,
                1 => Inbox::Live,
                2 => Inbox::Durable,
                _ => return None,
            };
            a.seq_form = flags & SEQ_FORM != 0;
            a.sync_got = flags & SYNC_GOT != 0;
            a.delivered = r.varint()?;
            a.gap_lo = r.varint()?;
            a.gap_hi = r.varint()?;
            a.sync_req = r.number()?;
            s.apps.push(a);
        }
        let topics = r.count()?;
        s.topics.reserve_exact(topics);
        for _ in 0..topics {
            let flags = r.byte()?;
            let app = r.byte()?;
            let id = r.number()?;
            let offset = r.varint()?;
            let acked = r.varint()?;
            let topic = r.str()?.to_string();
            let name = match flags & NAMED {
                0 => None,
                _ => Some(r.str()?.to_string()),
            };
            // What the rest of the state indexes by: an app that is there, an id that is not
            // the inbox's.
            if usize::from(app) >= s.apps.len() || id == 0 {
                return None;
            }
            s.topics.push(TopicName {
                app,
                topic,
                name,
                own: flags & OWN != 0,
                qos: QoS::from_u8(flags & 3)?,
                id,
                gap: flags & GAP != 0,
                recovering: flags & RECOVERING != 0,
                offset,
                acked,
            });
        }
        let replies = r.count()?;
        s.reply_subs.reserve_exact(replies);
        for _ in 0..replies {
            s.reply_subs.push(r.str()?.to_string());
        }
        r.0.is_empty().then_some(s)
    }
}

fn bits(low: u8, flags: &[(bool, u8)]) -> u8 {
    flags
        .iter()
        .filter(|(on, _)| *on)
        .fold(low, |b, (_, bit)| b | bit)
}

/// LEB128: seven bits a byte, low first, the high bit set on every byte but the last.
fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn string(out: &mut Vec<u8>, s: &str) {
    varint(out, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// Reads what [`State::pack`] wrote, front to back.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }

    fn varint(&mut self) -> Option<u64> {
        let mut n = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            n |= u64::from(b & 0x7f).checked_shl(shift)?;
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    /// A varint that fits `T`.
    fn number<T: TryFrom<u64>>(&mut self) -> Option<T> {
        T::try_from(self.varint()?).ok()
    }

    /// A count of what follows, each at least one byte long.
    fn count(&mut self) -> Option<usize> {
        self.number::<usize>().filter(|n| *n <= self.0.len())
    }

    fn str(&mut self) -> Option<&'a str> {
        let len = self.count()?;
        let (s, rest) = self.0.split_at(len);
        self.0 = rest;
        std::str::from_utf8(s).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;
    use tether_core::SavedSessions;

    use super::super::tests;
    use super::*;

    fn binding(app: &str) -> Binding {
        Binding::new(AppId::new(app), "u1".into(), 0)
    }

    fn app_inbox() -> impl Strategy<Value = AppInbox> {
        (
            "[a-z]{1,8}",
            0u8..3,
            any::<(bool, bool)>(),
            any::<(u64, u64, u64, u32)>(),
        )
            .prop_map(|(app, inbox, (seq_form, sync_got), (d, lo, hi, req))| {
                let mut a = AppInbox::new(AppId::new(app));
                a.inbox = [Inbox::Off, Inbox::Live, Inbox::Durable][usize::from(inbox)];
                (a.seq_form, a.sync_got) = (seq_form, sync_got);
                (a.delivered, a.gap_lo, a.gap_hi, a.sync_req) = (d, lo, hi, req);
                a
            })
    }

    fn topic_name() -> impl Strategy<Value = TopicName> {
        (
            any::<u8>(),
            "[a-z0-9_./-]{0,40}",
            proptest::option::of("\\PC{0,20}"),
            any::<(bool, bool, bool)>(),
            0u8..3,
            (1..=u16::MAX, any::<u64>(), any::<u64>()),
        )
            .prop_map(
                |(app, topic, name, (own, gap, recovering), qos, (id, offset, acked))| TopicName {
                    app,
                    topic,
                    name,
                    own,
                    qos: QoS::from_u8(qos).unwrap(),
                    id,
                    gap,
                    recovering,
                    offset,
                    acked,
                },
            )
    }

    prop_compose! {
        fn idle_state()(
            version in 0u8..3,
            flags in any::<[bool; 7]>(),
            numbers in any::<(u32, u16, u32, u16, u32, u64)>(),
            assigned in proptest::option::of("[A-Za-z0-9-]{1,36}"),
            apps in proptest::collection::vec(app_inbox(), 0..4),
            topics in proptest::collection::vec(topic_name(), 0..6),
            reply_subs in proptest::collection::vec("\\PC{1,30}", 0..3),
        ) -> State {
            let mut s = State::default();
            s.version = [None, Some(Version::V311), Some(Version::V5)][usize::from(version)];
            let [connected, closing, problem_info, clean_start, expiry_lowered, expiring, syncing] = flags;
            (s.connected, s.closing) = (connected, closing);
            (s.problem_info, s.clean_start) = (problem_info, clean_start);
            (s.expiry_lowered, s.expiring, s.syncing) = (expiry_lowered, expiring, syncing);
            let (expiry, packet_id, req, receive_max, max_packet, unknown) = numbers;
            (s.session_expiry, s.next_packet_id, s.next_req) = (expiry, packet_id, req);
            (s.receive_max, s.max_packet, s.unknown_acks) = (receive_max, max_packet, unknown);
            s.assigned = assigned;
            // A topic is of one of the connection's apps.
            let mut topics = topics;
            match apps.len() {
                0 => topics.clear(),
                n => topics.iter_mut().for_each(|t| t.app %= n as u8),
            }
            s.apps = apps;
            s.topics = topics;
            s.reply_subs = reply_subs;
            s
        }
    }

    proptest! {
        #[test]
        fn a_packed_state_unpacks_to_the_same_state(s in idle_state()) {
            let mut bytes = Vec::new();
            s.pack(&mut bytes);
            let back = State::unpack(&bytes, &[]).expect("unpacks");
            prop_assert_eq!(format!("{back:?}"), format!("{s:?}"));
        }

        #[test]
        fn bytes_that_are_not_a_packed_state_unpack_to_none_or_a_state(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            // Never a panic, whatever the bytes (they are the module's own, but a bug should
            // close one connection, not the node).
            let _ = State::unpack(&bytes, &[]);
        }

        #[test]
        fn a_cut_packed_state_does_not_unpack(s in idle_state(), cut in any::<prop::sample::Index>()) {
            let mut bytes = Vec::new();
            s.pack(&mut bytes);
            let at = cut.index(bytes.len());
            prop_assert!(State::unpack(&bytes[..at], &[]).is_none());
        }
    }

    #[test]
    fn an_idle_subscribed_state_packs_into_one_small_allocation_and_shares_its_app() {
        let mut s = tests::durable(64);
        s.connected = false;
        s.version = Some(Version::V311);
        tests::subscribe(&mut s, 1, "t0");
        let parked = ParkedState::park(Box::new(s));
        let ParkedState::Packed(bytes) = &parked else {
            panic!("an idle state packs");
        };
        // One app, one topic: a 48-byte chunk of glibc's, where the whole state took four
        // allocations (160, 64, 80 and 32 bytes).
        eprintln!("packed: {} bytes", bytes.len());
        assert!(bytes.len() <= 40, "{} bytes", bytes.len());
        let bindings = [binding("demo")];
        let back = parked.resume(&bindings).expect("unpacks");
        assert!(std::ptr::eq(
            back.apps[0].app.as_str(),
            bindings[0].app.as_str()
        ));
        assert_eq!(back.topics[0].topic, "t0");
        assert_eq!(back.apps[0].inbox, Inbox::Durable);
    }

    #[test]
    fn bytes_that_do_not_unpack_resume_no_state() {
        assert!(
            ParkedState::Packed(Box::from(&[0xff][..]))
                .resume(&[])
                .is_none()
        );
        // A topic of an app the state does not have would be indexed out of bounds later.
        let mut s = tests::durable(64);
        s.connected = false;
        tests::subscribe(&mut s, 1, "t0");
        s.topics[0].app = 1;
        let mut bytes = Vec::new();
        s.pack(&mut bytes);
        assert!(State::unpack(&bytes, &[]).is_none());
    }

    #[test]
    fn a_state_with_something_under_way_stays_whole() {
        let mut s = tests::durable(64);
        s.connected = false;
        s.version = Some(Version::V311);
        let (mut frames, mut out) = (VecDeque::new(), BytesMut::new());
        tests::ask_subscribe(&mut s, &mut frames, &mut out, 1, "t0", QoS::AtMostOnce);
        assert!(matches!(
            ParkedState::park(Box::new(s)),
            ParkedState::Whole(_)
        ));
    }

    #[test]
    fn a_will_waits_beside_a_packed_state_and_goes_when_the_connection_ends() {
        // Resumed, then lost: the will goes when the running state is dropped.
        let heard = Arc::new(will::tests::Heard::default());
        let parked = ParkedState::park(Box::new(will::tests::armed(&heard)));
        assert!(matches!(parked, ParkedState::Beside(_)));
        assert!(heard.0.lock().unwrap().is_empty(), "not sent by parking");
        let state = parked.resume(&[]).expect("unpacks");
        assert!(heard.0.lock().unwrap().is_empty(), "not sent by resuming");
        drop(state);
        assert_eq!(heard.0.lock().unwrap().len(), 1);

        // Ended while parked (its clean-up drops the rest): sent all the same.
        let heard = Arc::new(will::tests::Heard::default());
        drop(ParkedState::park(Box::new(will::tests::armed(&heard))));
        let wills = heard.0.lock().unwrap();
        assert_eq!((wills.len(), wills[0].kind.as_str()), (1, "gone"));
    }

    #[tokio::test]
    async fn a_persistent_session_is_saved_when_a_parked_connection_ends() {
        let store = Arc::new(tether_core::MemoryStore::default());
        let tasks = tokio_util::task::TaskTracker::new();
        let mut s = tests::durable(64);
        s.version = Some(Version::V311);
        tests::subscribe(&mut s, 1, "t0");
        s.kept = Some(session::tests::kept(
            store.clone(),
            tasks.clone(),
            ("demo", "u"),
        ));
        let parked = ParkedState::park(Box::new(s));
        assert!(matches!(parked, ParkedState::Beside(_)));
        drop(parked);
        tasks.close();
        tasks.wait().await;
        let saved = store
            .saved_session(&"demo".into(), &"u".into(), &"d".into(), 0)
            .await
            .unwrap()
            .expect("saved when the parked connection ended");
        let saved: serde_json::Value = serde_json::from_slice(&saved).unwrap();
        assert_eq!(saved["t"][0]["t"], "t0", "{saved}");
    }
}
