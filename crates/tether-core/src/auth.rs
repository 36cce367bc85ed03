//! Client tokens: JWTs that bind a connection to (app, user), and subscription tokens that let
//! a user into one topic.
//!
//! A connection token's claims: `sub` (the user id, required), `exp` (seconds since the epoch,
//! required), `nbf` (not before, checked when present), `iat` (optional), `app` (optional; when
//! present it must name the app the token binds to, so that two apps sharing a key cannot use
//! each other's tokens), `aud` and `iss` (checked when the app's [`TokenPolicy`] names them),
//! and `topics` (optional: the topics or patterns the user may subscribe to, for the `token`
//! topic rule). A subscription token has `sub`, `exp` and `topic` (one exact topic).
//!
//! Each app's [`TokenPolicy`] says which algorithms and keys it accepts: HS256 with the app's
//! secret (any language can mint one), and RS256 or ES256 with public keys in PEM or in JWKS
//! sets ([`jwks`]), for tokens an identity provider signs. What a refusal says is meant for the
//! client: what is wrong, in fixed words, never the decoder's text.
//!
//! # Which key verifies a token
//!
//! - A token whose header names a `kid` that a JWKS set of the policy holds is verified by
//!   that key only (and refused if the key is for another algorithm).
//! - Otherwise the policy's PEM keys of the token's algorithm are tried, then the JWKS keys of
//!   that algorithm: those without a `kid` when the token names one (a key without a `kid` may
//!   be any), all of them when the token names none (so that a provider that does not name its
//!   keys in tokens still works). A set holds at most [`jwks::MAX_KEYS`] keys.
//! - A token naming a `kid` that nothing verified tells each set ([`KeySource::unknown_kid`]):
//!   the provider may have rotated its keys. It is refused with `bad signature`, as a token
//!   signed by a wrong key is: the client learns nothing of which kids exist.

pub mod jwks;

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{AppId, UserId, validate_id};
pub use jwks::{FixedKeys, JwkKeys, KeySource};

/// The claims tether reads (and `mint` writes).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
    /// Topics or patterns (`room.*`) the user may subscribe to under the `token` rule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topics: Option<Vec<String>>,
    /// A subscription token's one topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
}

/// Why a token was refused. `Expired` has a close code of its own; the others are all "bad
/// token", with a reason fit to show the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(&'static str),
}

/// Which tokens an app accepts.
#[derive(Clone)]
pub struct TokenPolicy {
    /// Keys to try, each with the algorithm it verifies: the app's secret for HS256, and
    /// public keys in PEM for RS256 / ES256.
    keys: Vec<(Algorithm, DecodingKey)>,
    /// JWKS sets, read where they are kept at each verification (a fetcher may swap them).
    jwks: Vec<Arc<dyn KeySource>>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: Duration,
}

impl std::fmt::Debug for TokenPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are secrets or at least not worth printing.
        f.debug_struct("TokenPolicy")
            .field(
                "algorithms",
                &self.keys.iter().map(|(a, _)| a).collect::<Vec<_>>(),
            )
            .field("jwks", &self.jwks)
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .field("leeway", &self.leeway)
            .finish()
    }
}

/// A public key the policy could not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

/// What a verified connection token grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub user: UserId,
    /// Seconds since the epoch.
    pub exp: u64,
    /// The `topics` claim, if any.
    pub topics: Option<Vec<String>>,
}

impl TokenPolicy {
    /// HS256 with `secret` only, no audience or issuer: what every app accepts by default.
    pub fn hs256(secret: &[u8], leeway: Duration) -> Self {
        TokenPolicy {
            keys: vec![(Algorithm::HS256, DecodingKey::from_secret(secret))],
            jwks: Vec::new(),
            audience: None,
            issuer: None,
            leeway,
        }
    }

    /// Also accepts tokens signed with the private half of the PEM public key `pem`, with
    /// `algorithm` (`RS256` or `ES256`).
    pub fn with_public_key(mut self, algorithm: &str, pem: &[u8]) -> Result<Self, KeyError> {
        let (algorithm, key) = match algorithm {
            "RS256" => (Algorithm::RS256, DecodingKey::from_rsa_pem(pem)),
            "ES256" => (Algorithm::ES256, DecodingKey::from_ec_pem(pem)),
            other => {
                return Err(KeyError(format!(
                    "algorithm {other:?} is not supported (RS256 or ES256)"
                )));
            }
        };
        let key = key.map_err(|_| KeyError(format!("not a {algorithm:?} public key in PEM")))?;
        self.keys.push((algorithm, key));
        Ok(self)
    }

    /// Also accepts tokens signed with the keys of a JWKS set (RS256 and ES256), read from
    /// `source` at each verification.
    pub fn with_jwks(mut self, source: Arc<dyn KeySource>) -> Self {
        self.jwks.push(source);
        self
    }

    /// Only accepts HS256 if `hs256` (otherwise the app's secret signs webhooks only).
    pub fn without_hs256(mut self) -> Self {
        self.keys.retain(|(a, _)| *a != Algorithm::HS256);
        self
    }

    /// Requires this `aud`.
    pub fn with_audience(mut self, audience: Option<String>) -> Self {
        self.audience = audience;
        self
    }

    /// Requires this `iss`.
    pub fn with_issuer(mut self, issuer: Option<String>) -> Self {
        self.issuer = issuer;
        self
    }

    /// Verifies a connection token for `app` and returns what it grants.
    pub fn verify(&self, app: &AppId, token: &str) -> Result<Grant, TokenError> {
        let claims = self.decode(token)?;
        if let Some(token_app) = &claims.app
            && token_app != app.as_str()
        {
            return Err(TokenError::Invalid("the token is for another app"));
        }
        if claims.topic.is_some() {
            return Err(TokenError::Invalid(
                "a subscription token cannot bind a connection",
            ));
        }
        validate_id("sub", &claims.sub).map_err(|_| TokenError::Invalid("bad sub claim"))?;
        Ok(Grant {
            user: UserId::new(claims.sub),
            exp: claims.exp,
            topics: claims.topics,
        })
    }

    /// Verifies a subscription token of `app`: it must name `user` and `topic`, and no other
    /// app (apps that share a key, such as an identity provider's, must not open each
    /// other's topics).
    pub fn verify_subscription(
        &self,
        app: &AppId,
        user: &UserId,
        topic: &str,
        token: &str,
    ) -> Result<(), TokenError> {
        let claims = self.decode(token)?;
        if claims.app.as_deref().is_some_and(|a| a != app.as_str()) {
            return Err(TokenError::Invalid("the token is for another app"));
        }
        if claims.sub != user.as_str() {
            return Err(TokenError::Invalid("the token is for another user"));
        }
        if claims.topic.as_deref() != Some(topic) {
            return Err(TokenError::Invalid("the token is for another topic"));
        }
        Ok(())
    }

    /// The claims of `token` if one of the policy's keys verifies it (see the module's
    /// "Which key verifies a token") and its time, audience and issuer claims hold.
    fn decode(&self, token: &str) -> Result<Claims, TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| TokenError::Invalid("malformed"))?;
        let alg = header.alg;
        let by_jwks = !self.jwks.is_empty() && matches!(alg, Algorithm::RS256 | Algorithm::ES256);
        if !by_jwks && !self.keys.iter().any(|(a, _)| *a == alg) {
            return Err(TokenError::Invalid("algorithm not accepted"));
        }
        let validation = self.validation(alg);
        // `Some(result)` once a key verified the signature (the claims may still be refused);
        // `None` for a key that does not fit the token.
        let attempt =
            |key: &DecodingKey| match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                Ok(data) => Some(Ok(data.claims)),
                Err(e) if doesnt_fit(e.kind()) => None,
                Err(e) => Some(Err(TokenError::from_kind(e.kind()))),
            };
        let bad = || TokenError::Invalid("bad signature");
        let sets: Vec<Arc<JwkKeys>> = self.jwks.iter().filter_map(|s| s.keys()).collect();
        let kid = header.kid.as_deref();
        if let Some(named) = kid.and_then(|kid| sets.iter().find_map(|set| set.named(kid))) {
            if named.algorithm != alg {
                return Err(TokenError::Invalid("algorithm not accepted"));
            }
            return attempt(&named.key).unwrap_or_else(|| Err(bad()));
        }
        let pem = self.keys.iter().filter(|(a, _)| *a == alg).map(|(_, k)| k);
        let from_sets = sets.iter().flat_map(|set| set.of(alg, kid.is_some()));
        if let Some(result) = pem.chain(from_sets).find_map(attempt) {
            return result;
        }
        if kid.is_some() {
            self.jwks.iter().for_each(|source| source.unknown_kid());
        }
        Err(bad())
    }

    /// What a token of `algorithm` must hold besides a good signature.
    fn validation(&self, algorithm: Algorithm) -> Validation {
        let mut validation = Validation::new(algorithm);
        validation.leeway = self.leeway.as_secs();
        validation.validate_nbf = true;
        // What the policy checks must be there: a token without `aud` or `iss` would
        // otherwise pass an app that names them.
        let mut required = vec!["exp", "sub"];
        required.extend(self.audience.as_ref().map(|_| "aud"));
        required.extend(self.issuer.as_ref().map(|_| "iss"));
        validation.set_required_spec_claims(&required);
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
        }
        validation
    }
}

/// Whether a decoding error says the key does not verify the token (another key may), rather
/// than that the token is bad whichever key verifies it (its claims are checked only after its
/// signature).
fn doesnt_fit(kind: &ErrorKind) -> bool {
    matches!(
        kind,
        ErrorKind::InvalidSignature
            | ErrorKind::InvalidKeyFormat
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::Provider(_)
    )
}

impl TokenError {
    fn from_kind(kind: &ErrorKind) -> TokenError {
        TokenError::Invalid(match kind {
            ErrorKind::ExpiredSignature => return TokenError::Expired,
            ErrorKind::InvalidSignature => "bad signature",
            ErrorKind::ImmatureSignature => "not valid yet (nbf)",
            ErrorKind::InvalidAudience => "audience not accepted",
            ErrorKind::InvalidIssuer => "issuer not accepted",
            ErrorKind::MissingRequiredClaim(_) => {
                "a required claim is missing (sub, exp, aud, iss)"
            }
            ErrorKind::InvalidAlgorithm => "algorithm not accepted",
            ErrorKind::Json(_) => "claims of the wrong type",
            _ => "malformed",
        })
    }
}

/// Mints a connection token for `user` of `app`, valid for `ttl` (HS256).
pub fn mint(secret: &[u8], app: &AppId, user: &UserId, ttl: Duration) -> String {
    sign(secret, &minted(app, user, ttl))
}

/// Mints a subscription token: `user` of `app` may subscribe to `topic` until `ttl` has passed
/// (HS256).
pub fn mint_subscription(
    secret: &[u8],
    app: &AppId,
    user: &UserId,
    topic: &str,
    ttl: Duration,
) -> String {
    let claims = Claims {
        topic: Some(topic.to_owned()),
        ..minted(app, user, ttl)
    };
    sign(secret, &claims)
}

/// The claims of a token minted now for `user` of `app`, valid for `ttl`.
fn minted(app: &AppId, user: &UserId, ttl: Duration) -> Claims {
    let now = crate::now_ms() / 1000;
    Claims {
        sub: user.as_str().to_owned(),
        exp: now + ttl.as_secs().max(1),
        iat: Some(now),
        app: Some(app.as_str().to_owned()),
        ..Claims::default()
    }
}

/// Signs `claims` with HS256.
pub fn sign(secret: &[u8], claims: &Claims) -> String {
    // HS256 with an in-memory key cannot fail: serialising `Claims` is infallible and the
    // rust_crypto backend is compiled in.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

/// Verifies an HS256 connection token for `app` and returns the user it names.
pub fn verify(
    secret: &[u8],
    app: &AppId,
    token: &str,
    leeway: Duration,
) -> Result<UserId, TokenError> {
    TokenPolicy::hs256(secret, leeway)
        .verify(app, token)
        .map(|grant| grant.user)
}

#[cfg(test)]
mod tests;
