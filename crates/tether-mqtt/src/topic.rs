//! Topic names and filters (MQTT 5, 4.7): what the session checks before it maps a filter
//! onto a tether topic (`docs/mqtt.md`, section 5). The codec itself refuses only what makes
//! a packet invalid: wildcards in a PUBLISH's topic name.

/// The multi-level and single-level wildcards.
pub fn has_wildcards(s: &str) -> bool {
    s.bytes().any(|b| b == b'+' || b == b'#')
}

/// A shared subscription's filter (`$share/{group}/{filter}`, MQTT 5, 4.8.2).
pub fn is_shared(filter: &str) -> bool {
    filter.starts_with("$share/")
}

/// A topic filter as MQTT defines it: not empty ([MQTT-4.7.3-1]), `#` only as the whole last
/// level ([MQTT-4.7.1-2]), `+` only as a whole level ([MQTT-4.7.1-3]).
pub fn is_valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        let last = levels.peek().is_none();
        let ok = match level {
            "#" => last,
            "+" => true,
            l => !has_wildcards(l),
        };
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        for ok in [
            "a",
            "a/b",
            "+",
            "#",
            "a/+/c",
            "a/#",
            "/",
            "+/+",
            "$share/g/a",
        ] {
            assert!(is_valid_filter(ok), "{ok}");
        }
        for bad in ["", "a#", "a/#/b", "a+", "a/b+/c", "##"] {
            assert!(!is_valid_filter(bad), "{bad}");
        }
        assert!(has_wildcards("a/+"));
        assert!(!has_wildcards("$tether/inbox/demo"));
        assert!(is_shared("$share/g/a"));
    }
}
