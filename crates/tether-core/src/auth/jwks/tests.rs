use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::{Value, json};

use super::*;
use crate::AppId;
use crate::auth::{Claims, TokenError, TokenPolicy};

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(include_bytes!("../testdata/rsa.pem")).unwrap()
}

fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(include_bytes!("../testdata/ec8.pem")).unwrap()
}

/// The public JWK of `key`, named `kid`.
fn jwk(key: &EncodingKey, alg: Algorithm, kid: Option<&str>) -> Value {
    let mut jwk = Jwk::from_encoding_key(key, alg).unwrap();
    jwk.common.key_id = kid.map(Into::into);
    serde_json::to_value(jwk).unwrap()
}

fn set(keys: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({ "keys": keys })).unwrap()
}

fn policy(keys: Vec<Value>) -> TokenPolicy {
    let parsed = JwkKeys::parse(&set(keys)).unwrap();
    TokenPolicy::hs256(b"s3cret", Duration::from_secs(5))
        .with_jwks(Arc::new(FixedKeys(Arc::new(parsed.keys))))
        .without_hs256()
}

/// A token for alice signed with `key`, its header naming `kid`.
fn token(alg: Algorithm, key: &EncodingKey, kid: Option<&str>) -> String {
    let claims = Claims {
        sub: "alice".into(),
        exp: crate::now_ms() / 1000 + 60,
        ..Claims::default()
    };
    let header = Header {
        kid: kid.map(Into::into),
        ..Header::new(alg)
    };
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

#[test]
fn rs256_and_es256_keys_are_kept_and_every_other_key_is_skipped_with_its_reason() {
    let mut small = jwk(&rsa(), Algorithm::RS256, Some("small"));
    // A 1024-bit modulus: 128 bytes, the top bit set.
    small["n"] = json!(base64_url(&[0xff; 128]));
    let mut p384 = jwk(&ec(), Algorithm::ES256, Some("p384"));
    p384["crv"] = json!("P-384");
    let mut enc = jwk(&rsa(), Algorithm::RS256, Some("enc"));
    enc["use"] = json!("enc");
    let mut rs512 = jwk(&rsa(), Algorithm::RS256, Some("rs512"));
    rs512["alg"] = json!("RS512");
    let mut mismatched = jwk(&rsa(), Algorithm::RS256, Some("mismatched"));
    mismatched["alg"] = json!("ES256");
    let parsed = JwkKeys::parse(&set(vec![
        jwk(&rsa(), Algorithm::RS256, Some("k1")),
        json!({ "kty": "oct", "kid": "hmac", "k": "c2VjcmV0" }),
        json!({ "kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo" }),
        small,
        p384,
        enc,
        rs512,
        mismatched,
        json!("not an object"),
        jwk(&ec(), Algorithm::ES256, Some("k1")),
        jwk(&ec(), Algorithm::ES256, None),
    ]))
    .unwrap();
    assert_eq!(parsed.keys.kids(), ["k1", "-"]);
    let skipped = parsed.skipped.join("\n");
    for expected in [
        "keys[1] (kid \"hmac\") skipped: key type not supported",
        "keys[2] skipped: key type not supported",
        "keys[3] (kid \"small\") skipped: its RSA modulus has 1024 bits (at least 2048)",
        "keys[4] (kid \"p384\") skipped: curve P384 is not supported (P-256)",
        "keys[5] (kid \"enc\") skipped: not a signing key",
        "keys[6] (kid \"rs512\") skipped: algorithm RS512 is not supported (RS256, ES256)",
        "keys[7] (kid \"mismatched\") skipped: algorithm ES256 does not fit the key's type",
        "keys[8] skipped: not a JWK this version reads",
        "keys[9] (kid \"k1\") skipped: its kid appears earlier in the set",
    ] {
        assert!(
            skipped.contains(expected),
            "{expected:?} not in:\n{skipped}"
        );
    }
    assert_eq!(parsed.skipped.len(), 9, "{skipped}");
}

#[test]
fn a_document_without_a_usable_key_is_refused() {
    let not_json = JwkKeys::parse(b"<html>").unwrap_err();
    assert!(not_json.0.contains("not a JWKS document"), "{not_json}");
    assert!(JwkKeys::parse(br#"{"keys": {}}"#).is_err());
    let empty = JwkKeys::parse(&set(vec![])).unwrap_err();
    assert!(empty.0.contains("the set is empty"), "{empty}");
    let only_hmac = JwkKeys::parse(&set(vec![json!({ "kty": "oct", "k": "c2VjcmV0" })]));
    let why = only_hmac.unwrap_err().0;
    assert!(
        why.contains("keys[0] skipped: key type not supported"),
        "{why}"
    );
}

#[test]
fn a_set_keeps_at_most_max_keys() {
    let keys = (0..MAX_KEYS + 3)
        .map(|i| jwk(&ec(), Algorithm::ES256, Some(&format!("k{i}"))))
        .collect();
    let parsed = JwkKeys::parse(&set(keys)).unwrap();
    assert_eq!(parsed.keys.len(), MAX_KEYS);
    assert_eq!(parsed.skipped.len(), 3);
}

#[test]
fn a_token_is_verified_by_the_key_its_kid_names_and_only_for_that_keys_algorithm() {
    let app = AppId::from("demo");
    let p = policy(vec![
        jwk(&rsa(), Algorithm::RS256, Some("k1")),
        jwk(&ec(), Algorithm::ES256, Some("k2")),
    ]);
    let by_rsa = token(Algorithm::RS256, &rsa(), Some("k1"));
    assert_eq!(p.verify(&app, &by_rsa).unwrap().user.as_str(), "alice");
    let by_ec = token(Algorithm::ES256, &ec(), Some("k2"));
    assert_eq!(p.verify(&app, &by_ec).unwrap().user.as_str(), "alice");
    // k1 is an RSA key: an ES256 token naming it is refused before any signature check.
    let confused = token(Algorithm::ES256, &ec(), Some("k1"));
    assert_eq!(
        p.verify(&app, &confused),
        Err(TokenError::Invalid("algorithm not accepted"))
    );
    // The right key's signature, the wrong key named: refused, not retried with other keys.
    let misnamed = token(Algorithm::RS256, &rsa(), Some("k2"));
    assert!(p.verify(&app, &misnamed).is_err());
    // No kid: every key of the algorithm is tried.
    let unnamed = token(Algorithm::RS256, &rsa(), None);
    assert!(p.verify(&app, &unnamed).is_ok());
    // HS256 is not accepted through a JWKS (its keys are public).
    let hs = crate::auth::mint(b"s3cret", &app, &"alice".into(), Duration::from_secs(60));
    assert_eq!(
        p.verify(&app, &hs),
        Err(TokenError::Invalid("algorithm not accepted"))
    );
}

/// A source that counts the unknown kids it is told of, with keys that can be swapped.
#[derive(Debug, Default)]
struct Counting {
    keys: std::sync::Mutex<Option<Arc<JwkKeys>>>,
    unknown: AtomicUsize,
}

impl KeySource for Counting {
    fn keys(&self) -> Option<Arc<JwkKeys>> {
        self.keys.lock().unwrap().clone()
    }

    fn unknown_kid(&self) {
        self.unknown.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn an_unknown_kid_is_refused_as_a_bad_signature_and_reported_to_the_source() {
    let app = AppId::from("demo");
    let source = Arc::new(Counting::default());
    let p = TokenPolicy::hs256(b"s3cret", Duration::from_secs(5))
        .with_jwks(source.clone())
        .without_hs256();
    let k2 = token(Algorithm::ES256, &ec(), Some("k2"));
    // Nothing fetched yet.
    assert_eq!(
        p.verify(&app, &k2),
        Err(TokenError::Invalid("bad signature"))
    );
    assert_eq!(source.unknown.load(Ordering::Relaxed), 1);
    let only_k1 = JwkKeys::parse(&set(vec![jwk(&rsa(), Algorithm::RS256, Some("k1"))]));
    *source.keys.lock().unwrap() = Some(Arc::new(only_k1.unwrap().keys));
    assert_eq!(
        p.verify(&app, &k2),
        Err(TokenError::Invalid("bad signature"))
    );
    assert_eq!(source.unknown.load(Ordering::Relaxed), 2);
    // The keys rotate: the same token is accepted with no change to the policy.
    let rotated = JwkKeys::parse(&set(vec![jwk(&ec(), Algorithm::ES256, Some("k2"))]));
    *source.keys.lock().unwrap() = Some(Arc::new(rotated.unwrap().keys));
    assert!(p.verify(&app, &k2).is_ok());
    // A token without a kid that no key verifies is no news for the source.
    let unnamed = token(Algorithm::RS256, &rsa(), None);
    assert!(p.verify(&app, &unnamed).is_err());
    assert_eq!(source.unknown.load(Ordering::Relaxed), 2);
}

#[test]
fn a_key_without_a_kid_and_a_pem_key_verify_tokens_whatever_kid_they_name() {
    let app = AppId::from("demo");
    let anonymous = policy(vec![
        jwk(&rsa(), Algorithm::RS256, Some("k1")),
        jwk(&ec(), Algorithm::ES256, None),
    ]);
    assert!(
        anonymous
            .verify(&app, &token(Algorithm::ES256, &ec(), Some("any")))
            .is_ok()
    );
    // Before JWKS sets, PEM keys verified tokens whatever their kid: they still do.
    let pem = TokenPolicy::hs256(b"s3cret", Duration::from_secs(5))
        .with_public_key("RS256", include_bytes!("../testdata/rsa.pub"))
        .unwrap()
        .with_jwks(Arc::new(Counting::default()));
    assert!(
        pem.verify(&app, &token(Algorithm::RS256, &rsa(), Some("idp-2024")))
            .is_ok()
    );
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
