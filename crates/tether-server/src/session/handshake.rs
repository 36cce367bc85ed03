//! The checks of a `connect` frame: protocol version, device, every binding's app and token,
//! the heartbeat. The first thing any transport's client sends, checked the same way for all.

use std::collections::HashSet;
use std::time::Duration;

use tether_core::auth::TokenError;
use tether_core::{DeviceId, echo_id, validate_id};
use tether_proto::{Code, Connect, PROTOCOL_VERSION};

use super::access::Shared;
use crate::config::Config;
use crate::link::Binding;

/// What a `connect` is checked against: the apps' rules and the node's limits.
#[derive(Debug)]
pub struct Handshake {
    access: Shared,
    max_bindings: usize,
    heartbeat_default: Duration,
    heartbeat_min: Duration,
    heartbeat_max: Duration,
}

/// A `connect` that passed.
#[derive(Debug)]
pub struct Accepted {
    pub device: DeviceId,
    /// Each binding's app, user and token expiry.
    pub bindings: Vec<Binding>,
    /// Each binding's `last_seq`, in the same order.
    pub last_seqs: Vec<Option<u64>>,
    /// The heartbeat interval agreed on: the client's proposal within the node's bounds.
    pub heartbeat: Duration,
}

impl Handshake {
    pub fn new(config: &Config, access: Shared) -> Self {
        Handshake {
            access,
            max_bindings: config.limits.max_bindings,
            heartbeat_default: config.gateway.heartbeat_default,
            heartbeat_min: config.gateway.heartbeat_min,
            heartbeat_max: config.gateway.heartbeat_max,
        }
    }

    /// Checks a `connect`, or says why it is refused (the code and reason the client gets).
    pub fn accept(&self, connect: Connect) -> Result<Accepted, (Code, String)> {
        if connect.version != PROTOCOL_VERSION {
            return Err((
                Code::UNSUPPORTED_VERSION,
                format!(
                    "protocol version {} is not supported (this server speaks {PROTOCOL_VERSION})",
                    connect.version
                ),
            ));
        }
        validate_id("device", &connect.device).map_err(|e| (Code::PROTOCOL, e))?;
        let n = connect.bindings.len();
        if n == 0 || n > self.max_bindings {
            return Err((
                Code::BAD_BINDINGS,
                format!(
                    "a connect needs 1 to {} bindings, not {n}",
                    self.max_bindings
                ),
            ));
        }
        let access = self.access.load();
        let mut seen = HashSet::new();
        let mut bindings = Vec::with_capacity(n);
        let mut last_seqs = Vec::with_capacity(n);
        for binding in connect.bindings {
            if !seen.insert(binding.app.clone()) {
                return Err((
                    Code::BAD_BINDINGS,
                    format!("app {:?} is bound twice", echo_id(&binding.app)),
                ));
            }
            let Some((app, rules)) = access.app(&binding.app) else {
                return Err((
                    Code::UNKNOWN_APP,
                    format!("unknown app {:?}", echo_id(&binding.app)),
                ));
            };
            let grant = rules
                .tokens
                .verify(app, &binding.token)
                .map_err(|e| match e {
                    TokenError::Expired => {
                        (Code::TOKEN_EXPIRED, format!("token for app {app} expired"))
                    }
                    TokenError::Invalid(why) => {
                        (Code::BAD_TOKEN, format!("token for app {app}: {why}"))
                    }
                })?;
            bindings
                .push(Binding::new(app.clone(), grant.user, grant.exp).with_topics(grant.topics));
            last_seqs.push(binding.last_seq);
        }
        let proposed = Duration::from_millis(u64::from(connect.heartbeat_ms));
        let heartbeat = if proposed.is_zero() {
            self.heartbeat_default
        } else {
            proposed.clamp(self.heartbeat_min, self.heartbeat_max)
        };
        Ok(Accepted {
            device: DeviceId::new(connect.device),
            bindings,
            last_seqs,
            heartbeat,
        })
    }
}

#[cfg(test)]
mod tests {
    use tether_core::{UserId, auth};
    use tether_proto::Binding;

    use super::*;
    use crate::session::access::Access;

    fn handshake(config: &Config) -> Handshake {
        Handshake::new(config, Access::shared(config).unwrap())
    }

    fn connect(bindings: Vec<Binding>) -> Connect {
        Connect {
            version: PROTOCOL_VERSION,
            device: "phone-1".into(),
            bindings,
            heartbeat_ms: 0,
        }
    }

    fn binding(app: &str, token: String) -> Binding {
        Binding {
            app: app.into(),
            token,
            last_seq: Some(3),
        }
    }

    #[test]
    fn a_valid_connect_is_accepted_with_the_node_s_heartbeat() {
        let config = Config::for_tests();
        let app = &config.apps[0];
        let alice = UserId::from("alice");
        let token = auth::mint(
            app.secret.expose().as_bytes(),
            &app.id,
            &alice,
            Duration::from_secs(60),
        );
        let hs = handshake(&config);
        let accepted = hs.accept(connect(vec![binding(app.id.as_str(), token)]));
        let accepted = accepted.unwrap();
        assert_eq!(accepted.bindings[0].user.as_str(), "alice");
        assert!(accepted.bindings[0].expires_s() > tether_core::now_ms() / 1000);
        assert_eq!(accepted.last_seqs, [Some(3)]);
        assert_eq!(accepted.heartbeat, config.gateway.heartbeat_default);
    }

    #[test]
    fn refusals_name_the_problem_and_echo_at_most_an_id() {
        let config = Config::for_tests();
        let hs = handshake(&config);
        let code = |c: Connect| hs.accept(c).unwrap_err();
        assert_eq!(code(connect(vec![])).0, Code::BAD_BINDINGS);
        let long = "x".repeat(10_000);
        let (c, reason) = code(connect(vec![binding(&long, String::new())]));
        assert_eq!(c, Code::UNKNOWN_APP);
        assert!(reason.len() < 200, "{reason}");
        let app = config.apps[0].id.as_str();
        let (c, _) = code(connect(vec![binding(app, "not-a-jwt".into())]));
        assert_eq!(c, Code::BAD_TOKEN);
        let mut old = connect(vec![]);
        old.version = PROTOCOL_VERSION + 1;
        assert_eq!(code(old).0, Code::UNSUPPORTED_VERSION);
    }
}
