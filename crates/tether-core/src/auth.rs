//! Client tokens: a JWT HS256 signed with the app's secret, so any language can mint one.
//!
//! Claims: `sub` (the user id, required), `exp` (seconds since the epoch, required), `iat`
//! (optional), `app` (optional; when present it must name the app the token binds to, so that
//! two apps sharing a secret cannot use each other's tokens).

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{AppId, UserId, validate_id};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app: Option<String>,
}

/// Why a token was refused. Each maps to its own close code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Mints a token for `user` of `app`, valid for `ttl`.
pub fn mint(secret: &[u8], app: &AppId, user: &UserId, ttl: Duration) -> String {
    let now = crate::now_ms() / 1000;
    let claims = Claims {
        sub: user.as_str().to_owned(),
        exp: now + ttl.as_secs().max(1),
        iat: Some(now),
        app: Some(app.as_str().to_owned()),
    };
    // HS256 with an in-memory key cannot fail: serialising `Claims` is infallible and the
    // rust_crypto backend is compiled in.
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap_or_default()
}

/// Verifies `token` for `app` and returns the user it names.
///
/// `leeway` absorbs clock skew between the business server that minted the token and this node.
pub fn verify(
    secret: &[u8],
    app: &AppId,
    token: &str,
    leeway: Duration,
) -> Result<UserId, TokenError> {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = leeway.as_secs();
    validation.set_required_spec_claims(&["exp", "sub"]);
    let data =
        jsonwebtoken::decode::<Claims>(token, &DecodingKey::from_secret(secret), &validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => TokenError::Expired,
                ErrorKind::InvalidSignature => TokenError::Invalid("bad signature".into()),
                _ => TokenError::Invalid(e.to_string()),
            })?;
    let claims = data.claims;
    if let Some(token_app) = &claims.app
        && token_app != app.as_str()
    {
        return Err(TokenError::Invalid(format!(
            "token is for app {token_app:?}, not {app:?}"
        )));
    }
    validate_id("sub", &claims.sub).map_err(TokenError::Invalid)?;
    Ok(UserId::new(claims.sub))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEEWAY: Duration = Duration::from_secs(5);

    #[test]
    fn minted_tokens_verify() {
        let app = AppId::from("demo");
        let token = mint(
            b"s3cret",
            &app,
            &UserId::from("alice"),
            Duration::from_secs(60),
        );
        assert_eq!(
            verify(b"s3cret", &app, &token, LEEWAY),
            Ok(UserId::from("alice"))
        );
    }

    #[test]
    fn wrong_secret_wrong_app_and_expiry_are_refused() {
        let app = AppId::from("demo");
        let token = mint(
            b"s3cret",
            &app,
            &UserId::from("alice"),
            Duration::from_secs(60),
        );
        assert!(matches!(
            verify(b"other", &app, &token, LEEWAY),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            verify(b"s3cret", &AppId::from("other"), &token, LEEWAY),
            Err(TokenError::Invalid(_))
        ));
        let old = Claims {
            sub: "alice".into(),
            exp: crate::now_ms() / 1000 - 3600,
            iat: None,
            app: None,
        };
        let expired = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &old,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(
            verify(b"s3cret", &app, &expired, LEEWAY),
            Err(TokenError::Expired)
        );
        assert!(verify(b"s3cret", &app, "not.a.jwt", LEEWAY).is_err());
    }
}
