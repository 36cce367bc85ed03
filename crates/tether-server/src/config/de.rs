//! How values are read: durations written `"10s"` (or as a number of seconds), strings that
//! may be written as numbers, and secrets, whose value no error repeats.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Unexpected, Visitor};
use serde::{Deserialize, Deserializer};

use super::Secret;

/// Reads "250ms", "10s", "5m", "1h" (or a bare number of seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 10s, 250ms, 5m, 1h or 3d"))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => return Err(format!("{s:?}: unknown unit (use ms, s, m, h or d)")),
    };
    ms.map(Duration::from_millis)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// A string field that also takes a bare number (`TETHER_NODE__ID=7`).
pub(super) fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    struct Text;
    impl Visitor<'_> for Text {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<String, E> {
            Ok(s.to_owned())
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<String, E> {
            Ok(n.to_string())
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<String, E> {
            Ok(n.to_string())
        }
    }
    d.deserialize_any(Text)
}

/// A duration: `"10s"`, `"250ms"`... or a whole number of seconds.
pub(super) fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Length;
    impl Visitor<'_> for Length {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration like \"10s\" or a whole number of seconds")
        }
        fn visit_u64<E: de::Error>(self, n: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(n))
        }
        fn visit_i64<E: de::Error>(self, n: i64) -> Result<Duration, E> {
            u64::try_from(n)
                .map(Duration::from_secs)
                .map_err(|_| E::invalid_value(Unexpected::Signed(n), &self))
        }
        fn visit_str<E: de::Error>(self, s: &str) -> Result<Duration, E> {
            parse_duration(s).map_err(E::custom)
        }
    }
    d.deserialize_any(Length)
}

/// A secret is read as a string; what it was when it is not one is said without its value.
impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
        struct Hidden;
        impl Hidden {
            fn refuse<E: de::Error>(self, what: &str) -> Result<Secret, E> {
                Err(E::invalid_type(Unexpected::Other(what), &self))
            }
        }
        impl<'v> Visitor<'v> for Hidden {
            type Value = Secret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Secret, E> {
                Ok(Secret::new(s))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Secret, E> {
                self.refuse("a boolean")
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Secret, E> {
                self.refuse("an integer")
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Secret, E> {
                self.refuse("an integer")
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Secret, E> {
                self.refuse("a float")
            }
            fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<Secret, E> {
                self.refuse("bytes")
            }
            fn visit_seq<A: de::SeqAccess<'v>>(self, _: A) -> Result<Secret, A::Error> {
                self.refuse("an array")
            }
            fn visit_map<A: de::MapAccess<'v>>(self, _: A) -> Result<Secret, A::Error> {
                self.refuse("a table")
            }
        }
        d.deserialize_string(Hidden)
    }
}
