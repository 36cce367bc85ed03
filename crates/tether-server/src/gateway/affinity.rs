//! The affinity cookie: a `Set-Cookie` naming this node on the WebSocket upgrades (`101`) and
//! SSE streams the WebSocket listeners answer (`listen.affinity_cookie`), for layer-7 load
//! balancers that keep a client on one node by a cookie the server sets (HAProxy's `cookie`
//! on a server's cookie, nginx's `map $cookie_...`; see docs/load-balancers.md).
//!
//! tether itself never reads the cookie: a client that comes back to another node resumes
//! there all the same (its positions are in the store). The cookie only saves the balancer a
//! guess, so that a client comes back to the node that has its state warm. A node that drains
//! expires the cookie instead (`Max-Age=0`): a client should not be sent back to it, and a
//! balancer without health checks (open-source nginx) would keep sending it there.

use crate::config::{ListenConfig, SameSite};

/// The `Set-Cookie` header lines of the two WebSocket listeners, built once (and again at a
/// reload); empty when there is no cookie.
#[derive(Debug, Default)]
pub struct Affinity {
    plain: Box<str>,
    tls: Box<str>,
    /// The lines that expire the cookie (a draining node's), plain and TLS.
    clear_plain: Box<str>,
    clear_tls: Box<str>,
}

impl Affinity {
    /// The cookie of `listen` naming `node`. None when `listen.affinity_cookie` is empty, or
    /// when the name or `node` cannot make a cookie (validation reports those first).
    pub fn new(listen: &ListenConfig, node: &str) -> Affinity {
        let name = &listen.affinity_cookie;
        if name.is_empty() || !problems(listen, node).is_empty() {
            return Affinity::default();
        }
        let same_site = listen.affinity_cookie_same_site.attribute();
        let line = |value: &str, secure: bool| {
            let expire = if value.is_empty() { "; Max-Age=0" } else { "" };
            let secure = if secure { "; Secure" } else { "" };
            format!(
                "Set-Cookie: {name}={value}; Path=/{expire}; HttpOnly; SameSite={same_site}{secure}\r\n"
            )
            .into_boxed_str()
        };
        let secure = listen.affinity_cookie_secure;
        Affinity {
            plain: line(node, secure),
            tls: line(node, true),
            clear_plain: line("", secure),
            clear_tls: line("", true),
        }
    }

    /// The header line (ending in CRLF) for an answer of the plain (`tls` false) or TLS
    /// listener, one that expires the cookie when `draining`; empty without a cookie.
    pub fn line(&self, tls: bool, draining: bool) -> &str {
        match (tls, draining) {
            (false, false) => &self.plain,
            (true, false) => &self.tls,
            (false, true) => &self.clear_plain,
            (true, true) => &self.clear_tls,
        }
    }
}

/// What is wrong with `listen`'s affinity cookie naming `node`.
pub fn problems(listen: &ListenConfig, node: &str) -> Vec<String> {
    let name = &listen.affinity_cookie;
    let mut out = Vec::new();
    if name.is_empty() {
        return out;
    }
    if !name.bytes().all(is_token) {
        out.push(format!(
            "listen.affinity_cookie: {name:?} is not a cookie name (letters, digits and \
             !#$%&'*+-.^_`|~, no spaces)"
        ));
    }
    if !node.bytes().all(is_cookie_octet) {
        out.push(format!(
            "node.id: {node:?} cannot be the value of listen.affinity_cookie (a cookie value is \
             ASCII with no space, quote, comma, semicolon or backslash)"
        ));
    }
    let secure = listen.affinity_cookie_secure;
    if listen.affinity_cookie_same_site == SameSite::None && !secure {
        out.push(
            "listen.affinity_cookie_same_site: \"none\" needs affinity_cookie_secure = true \
             (browsers drop a SameSite=None cookie that is not Secure)"
                .into(),
        );
    }
    let prefixed = ["__Secure-", "__Host-"]
        .iter()
        // Bytes, not `str` slices: a name that is not a token may hold multi-byte
        // characters, and this check still runs for it.
        .any(|p| {
            name.as_bytes()
                .get(..p.len())
                .is_some_and(|b| b.eq_ignore_ascii_case(p.as_bytes()))
        });
    if prefixed && !secure {
        out.push(format!(
            "listen.affinity_cookie: {name:?} needs affinity_cookie_secure = true (browsers \
             drop a cookie with that prefix that is not Secure)"
        ));
    }
    out
}

/// A byte of an HTTP token (RFC 9110, 5.6.2): a cookie's name.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A byte of a cookie's value (RFC 6265, 4.1.1: `cookie-octet`).
fn is_cookie_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen(name: &str) -> ListenConfig {
        ListenConfig {
            affinity_cookie: name.into(),
            ..ListenConfig::default()
        }
    }

    #[test]
    fn the_cookie_names_the_node_and_is_secure_on_tls() {
        let a = Affinity::new(&listen("tether_node"), "tether-1");
        assert_eq!(
            a.line(false, false),
            "Set-Cookie: tether_node=tether-1; Path=/; HttpOnly; SameSite=Lax\r\n"
        );
        assert_eq!(
            a.line(true, false),
            "Set-Cookie: tether_node=tether-1; Path=/; HttpOnly; SameSite=Lax; Secure\r\n"
        );
        assert_eq!(
            a.line(false, true),
            "Set-Cookie: tether_node=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax\r\n"
        );
        let mut l = listen("n");
        l.affinity_cookie_same_site = SameSite::None;
        l.affinity_cookie_secure = true;
        assert_eq!(
            Affinity::new(&l, "a").line(false, false),
            "Set-Cookie: n=a; Path=/; HttpOnly; SameSite=None; Secure\r\n"
        );
    }

    #[test]
    fn no_name_no_cookie() {
        let a = Affinity::new(&listen(""), "tether-1");
        assert_eq!((a.line(false, false), a.line(true, true)), ("", ""));
        assert!(problems(&listen(""), "not a cookie; value").is_empty());
    }

    #[test]
    fn names_and_values_that_cannot_make_a_cookie_are_problems() {
        assert!(problems(&listen("tether_node"), "node-1.eu_west:7").is_empty());
        for (name, node) in [
            ("tether node", "n"),
            ("tether=node", "n"),
            ("n", "a b"),
            ("n", "a;b"),
            ("n", "a,b"),
            ("n", "\"a\""),
            ("n", "né"),
            ("__Host-node", "n"),
            // Not tokens, and their 7th or 9th byte inside a character: one problem, no panic.
            ("__Hosté", "n"),
            ("__Secureé", "n"),
        ] {
            assert_eq!(problems(&listen(name), node).len(), 1, "{name} {node}");
            let a = Affinity::new(&listen(name), node);
            assert_eq!(a.line(true, false), "", "{name} {node}");
        }
        let mut l = listen("n");
        l.affinity_cookie_same_site = SameSite::None;
        assert_eq!(problems(&l, "a").len(), 1);
    }
}
