use super::*;

const LEEWAY: Duration = Duration::from_secs(5);

fn now() -> u64 {
    crate::now_ms() / 1000
}

fn claims(user: &str) -> Claims {
    Claims {
        sub: user.into(),
        exp: now() + 60,
        ..Claims::default()
    }
}

fn signed(alg: Algorithm, key: &EncodingKey, claims: &Claims) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).unwrap()
}

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
        exp: now() - 3600,
        ..claims("alice")
    };
    let expired = sign(b"s3cret", &old);
    assert_eq!(
        verify(b"s3cret", &app, &expired, LEEWAY),
        Err(TokenError::Expired)
    );
    assert!(verify(b"s3cret", &app, "not.a.jwt", LEEWAY).is_err());
}

#[test]
fn refusals_say_what_is_wrong_in_fixed_words() {
    let app = AppId::from("demo");
    let policy = TokenPolicy::hs256(b"s3cret", LEEWAY);
    let refused = |token: &str| match policy.verify(&app, token) {
        Err(TokenError::Invalid(why)) => why,
        other => panic!("not refused as invalid: {other:?}"),
    };
    // A decoder's own text (base64, JSON positions) never reaches the client.
    assert_eq!(refused("x.%%%.y"), "malformed");
    assert_eq!(refused("not a token"), "malformed");
    let early = Claims {
        nbf: Some(now() + 3600),
        ..claims("alice")
    };
    assert_eq!(refused(&sign(b"s3cret", &early)), "not valid yet (nbf)");
    assert_eq!(refused(&sign(b"other", &claims("alice"))), "bad signature");
    let subscription = mint_subscription(
        b"s3cret",
        &AppId::from("demo"),
        &UserId::from("a"),
        "room",
        LEEWAY,
    );
    assert_eq!(
        refused(&subscription),
        "a subscription token cannot bind a connection"
    );
}

#[test]
fn audience_and_issuer_are_checked_when_the_policy_names_them() {
    let app = AppId::from("demo");
    let policy = TokenPolicy::hs256(b"s3cret", LEEWAY)
        .with_audience(Some("chat".into()))
        .with_issuer(Some("https://idp.example".into()));
    #[derive(Serialize)]
    struct WithAud<'a> {
        sub: &'a str,
        exp: u64,
        aud: &'a str,
        iss: &'a str,
    }
    let key = EncodingKey::from_secret(b"s3cret");
    let token = |aud, iss| {
        let c = WithAud {
            sub: "alice",
            exp: now() + 60,
            aud,
            iss,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &c, &key).unwrap()
    };
    assert!(
        policy
            .verify(&app, &token("chat", "https://idp.example"))
            .is_ok()
    );
    assert_eq!(
        policy.verify(&app, &token("shop", "https://idp.example")),
        Err(TokenError::Invalid("audience not accepted"))
    );
    assert_eq!(
        policy.verify(&app, &token("chat", "https://evil.example")),
        Err(TokenError::Invalid("issuer not accepted"))
    );
    // A token without them does not get past a policy that names them.
    let missing = sign(b"s3cret", &claims("alice"));
    assert_eq!(
        policy.verify(&app, &missing),
        Err(TokenError::Invalid(
            "a required claim is missing (sub, exp, aud, iss)"
        ))
    );
    let only_issuer = TokenPolicy::hs256(b"s3cret", LEEWAY).with_issuer(Some("x".into()));
    assert!(only_issuer.verify(&app, &missing).is_err());
    // Without an audience in the policy, a token that has one is accepted (it was refused
    // whatever it said before policies existed).
    let open = TokenPolicy::hs256(b"s3cret", LEEWAY);
    assert!(open.verify(&app, &token("anything", "anyone")).is_ok());
}

#[test]
fn rs256_and_es256_tokens_verify_with_the_public_keys_and_only_those_algorithms() {
    let app = AppId::from("demo");
    let rsa = EncodingKey::from_rsa_pem(include_bytes!("testdata/rsa.pem")).unwrap();
    let ec = EncodingKey::from_ec_pem(include_bytes!("testdata/ec8.pem")).unwrap();
    let policy = TokenPolicy::hs256(b"s3cret", LEEWAY)
        .with_public_key("RS256", include_bytes!("testdata/rsa.pub"))
        .unwrap()
        .with_public_key("ES256", include_bytes!("testdata/ec.pub"))
        .unwrap()
        .without_hs256();
    let by_rsa = signed(Algorithm::RS256, &rsa, &claims("alice"));
    let by_ec = signed(Algorithm::ES256, &ec, &claims("bob"));
    assert_eq!(policy.verify(&app, &by_rsa).unwrap().user.as_str(), "alice");
    assert_eq!(policy.verify(&app, &by_ec).unwrap().user.as_str(), "bob");
    let hs = mint(b"s3cret", &app, &UserId::from("carol"), LEEWAY);
    assert_eq!(
        policy.verify(&app, &hs),
        Err(TokenError::Invalid("algorithm not accepted"))
    );
    assert!(
        TokenPolicy::hs256(b"s", LEEWAY)
            .with_public_key("RS256", b"not a key")
            .is_err()
    );
    assert!(
        TokenPolicy::hs256(b"s", LEEWAY)
            .with_public_key("HS512", include_bytes!("testdata/rsa.pub"))
            .is_err()
    );
}

#[test]
fn grants_carry_expiry_and_topics_and_subscription_tokens_name_user_and_topic() {
    let app = AppId::from("demo");
    let policy = TokenPolicy::hs256(b"s3cret", LEEWAY);
    let with_topics = Claims {
        topics: Some(vec!["room.*".into(), "news".into()]),
        ..claims("alice")
    };
    let grant = policy.verify(&app, &sign(b"s3cret", &with_topics)).unwrap();
    assert_eq!(grant.exp, with_topics.exp);
    assert_eq!(grant.topics.as_deref().map(<[String]>::len), Some(2));

    let alice = UserId::from("alice");
    let token = mint_subscription(b"s3cret", &app, &alice, "room.1", Duration::from_secs(60));
    assert_eq!(
        policy.verify_subscription(&app, &alice, "room.1", &token),
        Ok(())
    );
    assert_eq!(
        policy.verify_subscription(&app, &UserId::from("bob"), "room.1", &token),
        Err(TokenError::Invalid("the token is for another user"))
    );
    assert_eq!(
        policy.verify_subscription(&app, &alice, "room.2", &token),
        Err(TokenError::Invalid("the token is for another topic"))
    );
    // Apps that share a key do not open each other's topics.
    assert_eq!(
        policy.verify_subscription(&AppId::from("other"), &alice, "room.1", &token),
        Err(TokenError::Invalid("the token is for another app"))
    );
}
