//! Which web origins may open WebSocket connections: exact origins and subdomain patterns.
//!
//! An entry is an origin as browsers send it, `scheme://host[:port]`, with no path:
//! `https://app.example.com`, `http://localhost:3000`, `capacitor://localhost`. A host
//! `*.example.com` matches every subdomain of `example.com`, at any depth
//! (`a.example.com`, `a.b.example.com`), but not `example.com` itself: list both to take both.
//! `null` (what sandboxed frames and `file:` pages send) matches only `null`.
//!
//! Schemes and hosts compare without regard to ASCII case, and a default port (80 for
//! `http`/`ws`, 443 for `https`/`wss`) is the same as none, as browsers leave it out. Hosts
//! are ASCII: write an internationalized name in its `xn--` form, as browsers send it. An
//! Origin header that is not a well-formed origin matches nothing.

/// A host, as an entry gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Host {
    Exact(String),
    /// `*.example.com`, kept as `.example.com`.
    Subdomains(String),
}

/// One allowed origin or pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OriginPattern {
    /// Lowercase; empty for `null`.
    scheme: String,
    host: Host,
    /// `None` for the scheme's default port.
    port: Option<u16>,
}

/// An origin's parts, borrowed from the text they were read from.
#[derive(Debug, PartialEq, Eq)]
struct Parts<'a> {
    scheme: &'a str,
    host: &'a str,
    port: Option<u16>,
}

/// Reads `scheme://host[:port]`. `None` for anything else (a path, credentials, a query, a
/// bad port, characters a host cannot have).
fn parts(text: &str) -> Option<Parts<'_>> {
    let (scheme, rest) = text.split_once("://")?;
    let mut s = scheme.bytes();
    if !s.next()?.is_ascii_alphabetic()
        || !s.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
    {
        return None;
    }
    let (host, port) = if rest.starts_with('[') {
        // An IPv6 literal.
        let end = rest.find(']')?;
        let (host, after) = rest.split_at(end + 1);
        let inner = &host[1..host.len() - 1];
        if inner.is_empty() || !inner.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return None;
        }
        match after {
            "" => (host, None),
            _ => (host, Some(after.strip_prefix(':')?)),
        }
    } else {
        match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        }
    };
    if !host.starts_with('[') {
        // `*.` is for patterns; `Origins::allows` refuses it in a header.
        let name = host.strip_prefix("*.").unwrap_or(host);
        let labels_ok = !name.is_empty()
            && name.split('.').all(|l| {
                !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !labels_ok {
            return None;
        }
    }
    let port = match port {
        None => None,
        Some(p) if !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()) => {
            let n: u16 = p.parse().ok()?;
            if n == 0 {
                return None;
            }
            let is = |name: &str| scheme.eq_ignore_ascii_case(name);
            let default = if is("http") || is("ws") {
                Some(80)
            } else if is("https") || is("wss") {
                Some(443)
            } else {
                None
            };
            (default != Some(n)).then_some(n)
        }
        Some(_) => return None,
    };
    Some(Parts { scheme, host, port })
}

impl OriginPattern {
    /// Reads an entry of `origins`.
    pub fn parse(text: &str) -> Result<OriginPattern, String> {
        if text.eq_ignore_ascii_case("null") {
            return Ok(OriginPattern {
                scheme: String::new(),
                host: Host::Exact("null".into()),
                port: None,
            });
        }
        if !text.is_ascii() {
            return Err(format!(
                "{text:?}: write an internationalized host in its xn-- form, as browsers send it"
            ));
        }
        if let Some((_, rest)) = text.split_once("://")
            && rest.contains('/')
        {
            return Err(format!(
                "{text:?}: an origin has no path (not even a trailing /): scheme://host[:port]"
            ));
        }
        let p = parts(text).ok_or_else(|| {
            format!(
                "{text:?} is not an origin like https://app.example.com, https://*.example.com \
                 or http://localhost:3000"
            )
        })?;
        let host = p.host.to_ascii_lowercase();
        let host = match host.strip_prefix('*') {
            Some(suffix) => Host::Subdomains(suffix.to_owned()),
            None => Host::Exact(host),
        };
        Ok(OriginPattern {
            scheme: p.scheme.to_ascii_lowercase(),
            host,
            port: p.port,
        })
    }

    fn matches(&self, origin: &Parts<'_>) -> bool {
        if !self.scheme.eq_ignore_ascii_case(origin.scheme) || self.port != origin.port {
            return false;
        }
        let host = origin.host.as_bytes();
        match &self.host {
            Host::Exact(h) => host.eq_ignore_ascii_case(h.as_bytes()),
            Host::Subdomains(suffix) => {
                // At least one label before the suffix; the suffix starts with its dot.
                host.len() > suffix.len()
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
                    && host[0] != b'.'
            }
        }
    }
}

/// The allowed origins of a listener. Empty: any origin.
#[derive(Debug, Clone, Default)]
pub struct Origins {
    patterns: Vec<OriginPattern>,
}

impl Origins {
    /// Every entry, or the first one that does not read, with its index.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Origins, (usize, String)> {
        let patterns = entries
            .iter()
            .enumerate()
            .map(|(i, e)| OriginPattern::parse(e.as_ref()).map_err(|err| (i, err)))
            .collect::<Result<_, _>>()?;
        Ok(Origins { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether an `Origin` header's value is one of the allowed origins. Allocates nothing.
    pub fn allows(&self, origin: &[u8]) -> bool {
        let Ok(text) = std::str::from_utf8(origin) else {
            return false;
        };
        let text = text.trim_matches(|c| c == ' ' || c == '\t');
        if text.eq_ignore_ascii_case("null") {
            return self
                .patterns
                .iter()
                .any(|p| p.scheme.is_empty() && p.host == Host::Exact("null".into()));
        }
        match parts(text) {
            // A header never carries a pattern.
            Some(p) if !p.host.starts_with('*') => {
                self.patterns.iter().any(|pattern| pattern.matches(&p))
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn origins(entries: &[&str]) -> Origins {
        Origins::parse(entries).expect("valid entries")
    }

    #[test]
    fn exact_origins_match_regardless_of_case_and_default_ports() {
        let o = origins(&["https://App.Example.com", "http://localhost:3000"]);
        for yes in [
            "https://app.example.com",
            "HTTPS://APP.EXAMPLE.COM",
            "https://app.example.com:443",
            "http://localhost:3000",
        ] {
            assert!(o.allows(yes.as_bytes()), "{yes}");
        }
        for no in [
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://app.example.com.evil.com",
            "https://evil.com/https://app.example.com",
            "https://app.example.com/",
            "http://localhost",
            "http://localhost:30000",
            "null",
            "",
        ] {
            assert!(!o.allows(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn a_wildcard_takes_subdomains_at_any_depth_but_not_the_domain() {
        let o = origins(&["https://*.example.com"]);
        for yes in ["https://a.example.com", "https://a.b.EXAMPLE.com"] {
            assert!(o.allows(yes.as_bytes()), "{yes}");
        }
        for no in [
            "https://example.com",
            "https://aexample.com",
            "https://.example.com",
            "https://*.example.com",
            "https://a.example.com.evil",
            "http://a.example.com",
            "https://a.example.com:444",
        ] {
            assert!(!o.allows(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn null_and_other_schemes_are_origins_too() {
        let o = origins(&["null", "capacitor://localhost", "http://[::1]:8080"]);
        assert!(o.allows(b"null"));
        assert!(o.allows(b"capacitor://localhost"));
        assert!(o.allows(b"http://[::1]:8080"));
        assert!(!origins(&["https://a.example.com"]).allows(b"null"));
    }

    #[test]
    fn bad_entries_say_what_is_wrong() {
        for (entry, says) in [
            ("https://app.example.com/", "no path"),
            ("https://app.example.com/x", "no path"),
            ("app.example.com", "is not an origin"),
            ("https://", "is not an origin"),
            ("https://a:0", "is not an origin"),
            ("https://a:99999", "is not an origin"),
            ("https://*", "is not an origin"),
            ("https://a.*.com", "is not an origin"),
            ("https://user@a.com", "is not an origin"),
            ("https://bücher.de", "xn--"),
            ("*", "is not an origin"),
        ] {
            let e = OriginPattern::parse(entry).expect_err(entry);
            assert!(e.contains(says), "{entry}: {e}");
        }
    }

    /// Host labels of letters, digits and dashes.
    fn labels(n: std::ops::Range<usize>) -> impl Strategy<Value = Vec<String>> {
        proptest::collection::vec("[a-zA-Z0-9][a-zA-Z0-9-]{0,6}", n)
    }

    /// The reference: lowercase both, drop a default port, compare as text; a pattern's `*.`
    /// takes one or more whole labels.
    fn reference(pattern: &str, origin: &str) -> bool {
        let norm = |s: &str| {
            let s = s.to_ascii_lowercase();
            for (scheme, port) in [("https://", ":443"), ("http://", ":80")] {
                if s.starts_with(scheme) && s.ends_with(port) {
                    return s[..s.len() - port.len()].to_owned();
                }
            }
            s
        };
        let (p, o) = (norm(pattern), norm(origin));
        match p.split_once("*.") {
            None => p == o,
            Some((scheme, rest)) => o
                .strip_prefix(scheme)
                .and_then(|h| h.strip_suffix(rest))
                .and_then(|h| h.strip_suffix('.'))
                .is_some_and(|labels| !labels.is_empty() && !labels.starts_with('.')),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matching_agrees_with_the_text_reference(
            https in any::<bool>(),
            wildcard in any::<bool>(),
            domain in labels(1..4),
            sub in labels(0..3),
            other in labels(1..4),
            port in prop_oneof![Just(None), Just(Some(443u16)), Just(Some(80)), Just(Some(8080))],
            origin_port in prop_oneof![Just(None), Just(Some(443u16)), Just(Some(80)), Just(Some(8080))],
            which in 0u8..4,
        ) {
            let scheme = if https { "https" } else { "http" };
            let port_text = |p: Option<u16>| p.map(|p| format!(":{p}")).unwrap_or_default();
            let domain = domain.join(".");
            let pattern = if wildcard {
                format!("{scheme}://*.{domain}{}", port_text(port))
            } else {
                format!("{scheme}://{domain}{}", port_text(port))
            };
            let host = match which {
                0 => domain.clone(),
                1 if !sub.is_empty() => format!("{}.{}", sub.join("."), domain.to_uppercase()),
                2 => format!("{}{domain}", other.join(".")),
                _ => other.join("."),
            };
            let origin_scheme = if which == 3 && !https { "https" } else { scheme };
            let origin = format!("{origin_scheme}://{host}{}", port_text(origin_port));
            let o = Origins::parse(&[pattern.as_str()]).expect("generated patterns are valid");
            prop_assert_eq!(
                o.allows(origin.as_bytes()),
                reference(&pattern, &origin),
                "{} against {}", origin, pattern
            );
        }

        #[test]
        fn arbitrary_headers_never_panic_and_never_match_an_empty_host(header in ".{0,64}") {
            let o = origins(&["https://*.example.com", "https://example.com", "null"]);
            let _ = o.allows(header.as_bytes());
        }
    }
}
