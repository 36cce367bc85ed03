//! The Will Message (docs/mqtt.md, section 9): taken from CONNECT, armed once the connection
//! is accepted (its user is known then), and sent to the app's webhook as an upstream of
//! `kind` = the will's topic when the connection ends without the device's DISCONNECT 0x00:
//! lost, timed out, closed for bad input, or ended with DISCONNECT 0x04 Disconnect with Will
//! Message. A kick, a drain, a shutdown or an app removed by a reload is the server's doing,
//! and sends none. The wire finds out how its connection ended from the `disconnect` frame it
//! translates, the device's DISCONNECT, or neither (the connection was lost); the will goes
//! when the translation state is dropped, whether its connection's task or the clean-up of a
//! parked connection drops it.

use std::sync::Arc;

use super::*;
use crate::transport::{Accepted, Will, Wills};

/// A will, from CONNECT to the connection's end.
#[derive(Debug)]
pub(super) enum Left {
    /// Read from CONNECT: the binding it is for, its `kind` and payload.
    Read {
        app: u8,
        kind: String,
        payload: Bytes,
    },
    /// The connection is accepted: sent if it ends without a goodbye.
    Armed(Arc<dyn Wills>, Will),
}

impl State {
    /// Takes CONNECT's will: its topic names the upstream's app and `kind` as a PUBLISH's
    /// does (section 6). `Err`: a topic that names none (MQTT 5 refuses the CONNECT with
    /// 0x90; 3.1.1 has no code for it, and its will is dropped).
    pub(super) fn read_will(&mut self, will: &mqtt::Will, apps: &[&str]) -> Result<(), ()> {
        let (app, kind) = match will.topic.strip_prefix("$tether/upstream/") {
            Some(rest) => {
                let (app, kind) = rest.split_once('/').ok_or(())?;
                let app = apps.iter().position(|a| *a == app).ok_or(())?;
                (app as u8, kind)
            }
            None if will.topic.starts_with('$') => return Err(()),
            None => (0, will.topic.as_str()),
        };
        validate_id("kind", kind).map_err(|_| ())?;
        self.will = Some(Box::new(Left::Read {
            app,
            kind: kind.to_string(),
            payload: will.payload.clone(),
        }));
        Ok(())
    }

    /// Arms the will for the accepted connection.
    pub(in crate::transport::mqtt) fn arm_will(&mut self, a: &Accepted<'_>) {
        let Some(Left::Read { app, kind, payload }) = self.will.take().map(|w| *w) else {
            return;
        };
        let Some(binding) = a.bindings.get(usize::from(app)) else {
            return;
        };
        let payload_kind = match serde_json::from_slice::<serde::de::IgnoredAny>(&payload) {
            Ok(_) => PayloadKind::Json,
            Err(_) => PayloadKind::Binary,
        };
        let will = Will {
            app: binding.app.clone(),
            user: binding.user.clone(),
            device: a.device.clone(),
            conn: a.conn,
            kind,
            payload_kind,
            payload,
        };
        self.will = Some(Box::new(Left::Armed(a.wills.clone(), will)));
    }

    /// How the connection ends, as far as the will and the session go: `code` is the
    /// `disconnect` the server closes it with. A connection taken over leaves its session to
    /// the one that took it (which read it at connect and saves it from then on), and sends
    /// its will, as MQTT 5 says (3.1.4).
    pub(super) fn ending(&mut self, code: Code) {
        if code == Code::TAKEN_OVER {
            self.kept = None;
        }
        if matches!(
            code,
            Code::KICKED | Code::DRAIN | Code::SHUTDOWN | Code::APP_REMOVED
        ) {
            self.will = None;
        }
    }
}

impl Drop for State {
    /// The connection is over: its session is saved for the last time, and its will sent
    /// unless it ended with a goodbye.
    fn drop(&mut self) {
        if !self.connected {
            return;
        }
        self.save_session(true);
        if let Some(Left::Armed(wills, will)) = self.will.take().map(|w| *w) {
            tracing::debug!(app = %will.app, kind = will.kind, "mqtt: sending a will");
            wills.will(will);
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Mutex;

    use tether_core::ConnId;

    use super::*;

    #[derive(Debug, Default)]
    pub(in crate::transport::mqtt::state) struct Heard(pub Mutex<Vec<Will>>);

    impl Wills for Heard {
        fn will(&self, will: Will) {
            self.0.lock().unwrap().push(will);
        }
    }

    pub(in crate::transport::mqtt::state) fn armed(heard: &Arc<Heard>) -> State {
        let mut s = State::default();
        s.version = Some(Version::V5);
        s.connected = true;
        let will = Will {
            app: "demo".into(),
            user: "u".into(),
            device: "d".into(),
            conn: ConnId(1),
            kind: "gone".into(),
            payload_kind: PayloadKind::Binary,
            payload: Bytes::from_static(b"bye"),
        };
        s.will = Some(Box::new(Left::Armed(heard.clone(), will)));
        s
    }

    #[test]
    fn only_a_connection_that_ends_without_a_goodbye_sends_its_will() {
        type End = fn(&mut State);
        let cases: [(&str, End, bool); 5] = [
            ("lost", |_| {}, true),
            (
                "DISCONNECT 0x00",
                |s| {
                    let _ = s.on_goodbye(mqtt::Disconnect::new(ReasonCode::SUCCESS));
                },
                false,
            ),
            (
                "DISCONNECT 0x04",
                |s| {
                    let d = mqtt::Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL_MESSAGE);
                    let _ = s.on_goodbye(d);
                },
                true,
            ),
            ("kicked", |s| s.ending(Code::KICKED), false),
            (
                "keep-alive timeout",
                |s| s.ending(Code::HEARTBEAT_TIMEOUT),
                true,
            ),
        ];
        for (case, end, sent) in cases {
            let heard = Arc::new(Heard::default());
            let mut s = armed(&heard);
            end(&mut s);
            drop(s);
            let wills = heard.0.lock().unwrap();
            assert_eq!(wills.len(), usize::from(sent), "{case}");
            if sent {
                assert_eq!(
                    (wills[0].kind.as_str(), &wills[0].payload[..]),
                    ("gone", &b"bye"[..])
                );
            }
        }
        // Never connected: nothing.
        let heard = Arc::new(Heard::default());
        let mut s = armed(&heard);
        s.connected = false;
        drop(s);
        assert!(heard.0.lock().unwrap().is_empty());
    }
}
