//! JSON Web Key Sets (RFC 7517): an identity provider's public keys, each named by a `kid`,
//! read from a file or fetched from a URL by the server, and the seam ([`KeySource`]) through
//! which a [`TokenPolicy`](super::TokenPolicy) reads whichever set is current.
//!
//! Only RS256 (RSA, at least 2048 bits) and ES256 (EC P-256) signing keys are kept. Every other
//! key (encryption keys, other algorithms and curves, symmetric `oct` keys, which would let
//! anyone who reads the public document sign tokens) is skipped with a reason for the caller's
//! log, never an error: providers publish keys of several kinds in one set.

use std::fmt;
use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::KeyError;

/// Keys kept from one set at most: a token without a `kid` is tried against each key of its
/// algorithm, so this bounds the signature checks one bad token costs. Providers publish a few.
pub const MAX_KEYS: usize = 32;

/// The shortest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// One usable key of a set.
#[derive(Clone)]
pub(super) struct JwkKey {
    pub(super) kid: Option<String>,
    pub(super) algorithm: Algorithm,
    pub(super) key: DecodingKey,
}

/// The RS256 and ES256 keys of a JWKS document, in the document's order.
///
/// # Invariants
///
/// At least one key (a set with none is refused by [`JwkKeys::parse`]), at most [`MAX_KEYS`],
/// and no two keys with the same `kid`.
#[derive(Clone)]
pub struct JwkKeys {
    keys: Vec<JwkKey>,
}

/// A parsed set and the keys skipped from it, each with its reason (for the log).
#[derive(Debug)]
pub struct Parsed {
    pub keys: JwkKeys,
    pub skipped: Vec<String>,
}

/// The document's shape: keys are read one by one, so that one key this version cannot read
/// is skipped instead of failing the set.
#[derive(Deserialize)]
struct Document {
    keys: Vec<serde_json::Value>,
}

impl JwkKeys {
    /// The usable keys of the JWKS document `json`. Refused: a document that is not a JSON
    /// object with a `keys` array, or that holds no usable key.
    pub fn parse(json: &[u8]) -> Result<Parsed, KeyError> {
        let document: Document = serde_json::from_slice(json).map_err(|_| {
            KeyError("not a JWKS document (a JSON object with a \"keys\" array)".into())
        })?;
        let mut keys: Vec<JwkKey> = Vec::new();
        let mut skipped = Vec::new();
        for (i, value) in document.keys.into_iter().enumerate() {
            let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
            let name = match &kid {
                Some(kid) => format!("keys[{i}] (kid {kid:?})"),
                None => format!("keys[{i}]"),
            };
            let usable = serde_json::from_value::<Jwk>(value)
                .map_err(|_| "not a JWK this version reads".to_owned())
                .and_then(|jwk| usable(&jwk));
            let refusal = match usable {
                Err(why) => Some(why),
                Ok(_) if keys.len() == MAX_KEYS => Some(format!("more than {MAX_KEYS} keys")),
                Ok(_) if kid.is_some() && keys.iter().any(|k| k.kid == kid) => {
                    Some("its kid appears earlier in the set".into())
                }
                Ok((algorithm, key)) => {
                    keys.push(JwkKey {
                        kid,
                        algorithm,
                        key,
                    });
                    None
                }
            };
            if let Some(why) = refusal {
                skipped.push(format!("{name} skipped: {why}"));
            }
        }
        if keys.is_empty() {
            let why = match skipped.is_empty() {
                true => "the set is empty".to_owned(),
                false => skipped.join("; "),
            };
            return Err(KeyError(format!("no RS256 or ES256 signing key ({why})")));
        }
        Ok(Parsed {
            keys: JwkKeys { keys },
            skipped,
        })
    }

    /// How many keys the set holds.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Never true (see the invariants); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys' ids (`-` for a key without one), for logs.
    pub fn kids(&self) -> Vec<&str> {
        self.keys
            .iter()
            .map(|k| k.kid.as_deref().unwrap_or("-"))
            .collect()
    }

    /// The key named `kid`.
    pub(super) fn named(&self, kid: &str) -> Option<&JwkKey> {
        self.keys.iter().find(|k| k.kid.as_deref() == Some(kid))
    }

    /// The keys of `algorithm`; only those without a kid when `anonymous`.
    pub(super) fn of(
        &self,
        algorithm: Algorithm,
        anonymous: bool,
    ) -> impl Iterator<Item = &DecodingKey> {
        self.keys
            .iter()
            .filter(move |k| k.algorithm == algorithm && !(anonymous && k.kid.is_some()))
            .map(|k| &k.key)
    }
}

impl fmt::Debug for JwkKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(
                self.keys
                    .iter()
                    .map(|k| (k.kid.as_deref().unwrap_or("-"), k.algorithm)),
            )
            .finish()
    }
}

/// The algorithm a JWK verifies and its key, or why it is skipped.
fn usable(jwk: &Jwk) -> Result<(Algorithm, DecodingKey), String> {
    if let Some(PublicKeyUse::Encryption | PublicKeyUse::Other(_)) = jwk.common.public_key_use {
        return Err("not a signing key (use is not \"sig\")".into());
    }
    let named = jwk.common.key_algorithm;
    let algorithm = match (&jwk.algorithm, named) {
        (AlgorithmParameters::RSA(rsa), None | Some(KeyAlgorithm::RS256)) => {
            let bits = modulus_bits(&rsa.n).ok_or("its RSA modulus is not base64url")?;
            if bits < MIN_RSA_BITS {
                return Err(format!(
                    "its RSA modulus has {bits} bits (at least {MIN_RSA_BITS})"
                ));
            }
            Algorithm::RS256
        }
        (AlgorithmParameters::EllipticCurve(ec), None | Some(KeyAlgorithm::ES256)) => {
            if ec.curve != EllipticCurve::P256 {
                return Err(format!("curve {:?} is not supported (P-256)", ec.curve));
            }
            let coordinate = |c: &str| decoded_len(c) == Some(32);
            if !coordinate(&ec.x) || !coordinate(&ec.y) {
                return Err("its P-256 point is not two 32-byte coordinates".into());
            }
            Algorithm::ES256
        }
        (_, Some(alg)) if alg != KeyAlgorithm::RS256 && alg != KeyAlgorithm::ES256 => {
            return Err(format!("algorithm {alg} is not supported (RS256, ES256)"));
        }
        (AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_), Some(alg)) => {
            return Err(format!("algorithm {alg} does not fit the key's type"));
        }
        _ => return Err("key type not supported (RSA or EC P-256)".into()),
    };
    let key = DecodingKey::from_jwk(jwk).map_err(|_| "its key material is not base64url")?;
    Ok((algorithm, key))
}

/// The length in bits of a base64url big-endian unsigned integer.
fn modulus_bits(b64: &str) -> Option<usize> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64.trim_end_matches('='))
        .ok()?;
    let first = bytes.iter().position(|&b| b != 0)?;
    Some((bytes.len() - first) * 8 - bytes[first].leading_zeros() as usize)
}

/// The decoded length of a base64url text, if it is one.
fn decoded_len(b64: &str) -> Option<usize> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64.trim_end_matches('='))
        .ok()
        .map(|b| b.len())
}

/// Where a [`TokenPolicy`](super::TokenPolicy) finds the current keys of one JWKS: a set read
/// once ([`FixedKeys`]), or one that a fetcher replaces while tokens are being verified.
///
/// Both methods are called on the verification path, once per token that uses the set: they
/// must return at once (no I/O, no lock held for long).
pub trait KeySource: Send + Sync + fmt::Debug {
    /// The keys in force; `None` while none were ever obtained (tokens are then refused as
    /// badly signed, unless another key of the policy verifies them).
    fn keys(&self) -> Option<Arc<JwkKeys>>;

    /// A token named a `kid` that no set of the policy holds, and no other key verified it:
    /// the keys may have been rotated. A fetcher may fetch again, at a rate it bounds (anyone
    /// can send such tokens). The token is refused whatever this does.
    fn unknown_kid(&self) {}
}

/// A set read once (a JWKS file: a reload reads it again).
#[derive(Debug, Clone)]
pub struct FixedKeys(pub Arc<JwkKeys>);

impl KeySource for FixedKeys {
    fn keys(&self) -> Option<Arc<JwkKeys>> {
        Some(self.0.clone())
    }
}

#[cfg(test)]
mod tests;
