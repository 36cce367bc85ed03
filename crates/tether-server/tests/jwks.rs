//! Tokens signed by an identity provider whose keys come from a JWKS, end to end: a real node,
//! the provider's document served over HTTP by the test (or written to a file), raw TCP
//! clients binding with RS256 and ES256 tokens that name their key by `kid`.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use common::*;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use tether_core::AppId;
use tether_core::auth::Claims;
use tether_proto::{Binding, Body, Code};
use tether_server::{Config, Node};
use tokio::net::TcpListener;

/// The test's identity provider: serves its JWKS document at `/jwks.json` and counts fetches.
#[derive(Clone)]
struct Idp {
    url: String,
    answer: Arc<Mutex<(StatusCode, String)>>,
    fetches: Arc<AtomicUsize>,
}

impl Idp {
    async fn start(keys: Vec<Value>) -> Idp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let idp = Idp {
            url: format!("http://{}/jwks.json", listener.local_addr().unwrap()),
            answer: Arc::new(Mutex::new((StatusCode::OK, document(keys)))),
            fetches: Arc::default(),
        };
        let app = axum::Router::new()
            .route("/jwks.json", axum::routing::get(serve))
            .with_state(idp.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        idp
    }

    fn publish(&self, keys: Vec<Value>) {
        *self.answer.lock().unwrap() = (StatusCode::OK, document(keys));
    }

    fn fail(&self) {
        *self.answer.lock().unwrap() = (StatusCode::SERVICE_UNAVAILABLE, "down".into());
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn serve(State(idp): State<Idp>) -> (StatusCode, String) {
    idp.fetches.fetch_add(1, Ordering::SeqCst);
    idp.answer.lock().unwrap().clone()
}

fn document(keys: Vec<Value>) -> String {
    json!({ "keys": keys }).to_string()
}

fn rsa() -> EncodingKey {
    EncodingKey::from_rsa_pem(include_bytes!(
        "../../tether-core/src/auth/testdata/rsa.pem"
    ))
    .unwrap()
}

fn ec() -> EncodingKey {
    EncodingKey::from_ec_pem(include_bytes!(
        "../../tether-core/src/auth/testdata/ec8.pem"
    ))
    .unwrap()
}

/// The public JWK of the test's RSA key (RS256) or EC key (ES256), named `kid`.
fn jwk(alg: Algorithm, kid: &str) -> Value {
    let key = if alg == Algorithm::RS256 { rsa() } else { ec() };
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.into());
    serde_json::to_value(jwk).unwrap()
}

/// A token for alice of `app`, signed with the test's key of `alg`, its header naming `kid`.
fn signed(app: &str, alg: Algorithm, kid: &str) -> String {
    let key = if alg == Algorithm::RS256 { rsa() } else { ec() };
    let claims = Claims {
        sub: "alice".into(),
        exp: tether_core::now_ms() / 1000 + 300,
        app: Some(app.into()),
        ..Claims::default()
    };
    let header = Header {
        kid: Some(kid.into()),
        ..Header::new(alg)
    };
    jsonwebtoken::encode(&header, &claims, &key).unwrap()
}

/// The test config's one app, renamed `app` (metrics are per app, and the tests of this file
/// share them), with HS256 off and `tokens` set by `set`.
fn config(app: &str, set: impl FnOnce(&mut tether_server::config::TokenConfig)) -> Config {
    let mut config = Config::for_tests();
    config.apps[0].id = AppId::from(app);
    config.apps[0].tokens.hs256 = false;
    set(&mut config.apps[0].tokens);
    config
}

/// What the node answers a `connect` binding `app` with `token`: `Ok` when connected, the
/// `disconnect`'s code and reason otherwise.
async fn bind(node: &Node, app: &str, token: String) -> Result<(), (Code, String)> {
    let mut client = TcpClient::open(node.tcp_addr().unwrap()).await;
    let binding = Binding {
        app: app.into(),
        token,
        last_seq: None,
    };
    client.send(&connect_with("phone", 0, vec![binding])).await;
    match client.frame().await.body {
        Body::Connected(_) => Ok(()),
        Body::Disconnect(d) => Err((d.code, d.reason)),
        other => panic!("not an answer to connect: {other:?}"),
    }
}

/// The refusal of a token of `app` for `reason`.
fn refused(app: &str, reason: &str) -> Result<(), (Code, String)> {
    Err((Code::BAD_TOKEN, format!("token for app {app}: {reason}")))
}

/// Binds again every 50 ms until the node accepts, at most `limit`.
async fn accepted_within(node: &Node, app: &str, token: &str, limit: Duration) {
    let began = Instant::now();
    loop {
        match bind(node, app, token.to_owned()).await {
            Ok(()) => return,
            Err(refusal) if began.elapsed() > limit => {
                panic!("still refused after {limit:?}: {refusal:?}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// The `tether_jwks_fetch_total` of `app` with `result`.
async fn fetch_metric(node: &Node, app: &str, result: &str) -> f64 {
    let page = Http::new(node).metrics().await;
    let series = format!("tether_jwks_fetch_total{{app=\"{app}\",result=\"{result}\"}}");
    metric(&page, &series).unwrap_or(0.0)
}

#[tokio::test]
async fn a_token_is_verified_by_the_jwks_key_its_kid_names_and_an_unknown_kid_is_refused_like_a_bad_signature()
 {
    const APP: &str = "idp-kid";
    let idp = Idp::start(vec![
        jwk(Algorithm::RS256, "rsa-1"),
        jwk(Algorithm::ES256, "ec-1"),
    ])
    .await;
    let node = start(config(APP, |t| t.jwks_url = Some(idp.url.clone()))).await;
    // The node fetched the set before it took connections.
    assert_eq!(idp.fetches(), 1);
    assert_eq!(fetch_metric(&node, APP, "ok").await, 1.0);

    assert_eq!(
        bind(&node, APP, signed(APP, Algorithm::RS256, "rsa-1")).await,
        Ok(())
    );
    assert_eq!(
        bind(&node, APP, signed(APP, Algorithm::ES256, "ec-1")).await,
        Ok(())
    );

    // Signed by the provider's RSA key, but naming a kid the set does not hold.
    let unknown = bind(&node, APP, signed(APP, Algorithm::RS256, "rsa-9")).await;
    // The right kid, the wrong key's signature.
    // (The signature's first character carries six bits of it: any other character is still
    // base64url, unlike the last one's, which has unused bits.)
    let token = signed(APP, Algorithm::ES256, "ec-1");
    let (signed_part, signature) = token.rsplit_once('.').unwrap();
    let other = if signature.starts_with('A') { 'B' } else { 'A' };
    let forged = format!("{signed_part}.{other}{}", &signature[1..]);
    let badly_signed = bind(&node, APP, forged).await;
    assert_eq!(unknown, refused(APP, "bad signature"));
    assert_eq!(
        unknown, badly_signed,
        "an unknown kid reads like any bad signature"
    );
    // A key named for one algorithm does not verify another's token.
    let confused = bind(&node, APP, signed(APP, Algorithm::ES256, "rsa-1")).await;
    assert_eq!(confused.unwrap_err().0, Code::BAD_TOKEN);
}

#[tokio::test]
async fn a_rotated_key_is_accepted_after_the_refetch_an_unknown_kid_asks_for_at_most_once_a_minute()
{
    const APP: &str = "idp-rotation";
    let idp = Idp::start(vec![jwk(Algorithm::RS256, "2026-11")]).await;
    let node = start(config(APP, |t| t.jwks_url = Some(idp.url.clone()))).await;
    let old = signed(APP, Algorithm::RS256, "2026-11");
    assert_eq!(bind(&node, APP, old.clone()).await, Ok(()));

    // The provider rotates to a new key; the node's refresh is ten minutes away.
    idp.publish(vec![jwk(Algorithm::ES256, "2026-12")]);
    let new = signed(APP, Algorithm::ES256, "2026-12");
    // The first client with the new kid is refused and makes the node fetch again.
    assert!(bind(&node, APP, new.clone()).await.is_err());
    accepted_within(&node, APP, &new, WAIT).await;
    assert_eq!(idp.fetches(), 2, "one refetch, however many clients tried");
    // The removed key stops working.
    assert_eq!(bind(&node, APP, old).await.unwrap_err().0, Code::BAD_TOKEN);

    // Within the minute, another rotation is not picked up by unknown kids.
    idp.publish(vec![jwk(Algorithm::RS256, "2027-01")]);
    let newer = signed(APP, Algorithm::RS256, "2027-01");
    for _ in 0..5 {
        assert!(bind(&node, APP, newer.clone()).await.is_err());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(idp.fetches(), 2, "a second refetch within the minute");
    assert!(bind(&node, APP, newer).await.is_err());
    assert_eq!(bind(&node, APP, new).await, Ok(()));
}

#[tokio::test]
async fn a_node_whose_provider_is_down_starts_and_accepts_its_tokens_once_a_fetch_succeeds() {
    const APP: &str = "idp-down";
    let idp = Idp::start(Vec::new()).await;
    idp.fail();
    let node = start(config(APP, |t| t.jwks_url = Some(idp.url.clone()))).await;
    assert_eq!(fetch_metric(&node, APP, "error").await, 1.0);
    let token = signed(APP, Algorithm::RS256, "k1");
    assert_eq!(
        bind(&node, APP, token.clone()).await,
        refused(APP, "bad signature")
    );

    idp.publish(vec![jwk(Algorithm::RS256, "k1")]);
    // Failed fetches are retried after 1 s, then 2 s (the refresh is ten minutes).
    accepted_within(&node, APP, &token, Duration::from_secs(6)).await;
    assert!(fetch_metric(&node, APP, "ok").await >= 1.0);
}

#[tokio::test]
async fn a_jwks_file_is_read_at_start_and_again_at_a_reload_and_a_broken_one_keeps_the_old_keys() {
    const APP: &str = "idp-file";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, document(vec![jwk(Algorithm::ES256, "ec-1")])).unwrap();
    let config = config(APP, |t| t.jwks_file = Some(file.clone()));
    let node = start(config.clone()).await;
    let ec_1 = signed(APP, Algorithm::ES256, "ec-1");
    let rsa_1 = signed(APP, Algorithm::RS256, "rsa-1");
    assert_eq!(bind(&node, APP, ec_1.clone()).await, Ok(()));
    assert!(bind(&node, APP, rsa_1.clone()).await.is_err());
    // HS256 is off: the app's secret signs nothing a client can bind with.
    let hs = token_for(APP, SECRET, "alice");
    assert_eq!(
        bind(&node, APP, hs).await,
        refused(APP, "algorithm not accepted")
    );

    std::fs::write(&file, document(vec![jwk(Algorithm::RS256, "rsa-1")])).unwrap();
    node.apply(config.clone()).expect("the reload");
    assert_eq!(bind(&node, APP, rsa_1.clone()).await, Ok(()));
    assert!(bind(&node, APP, ec_1).await.is_err());

    std::fs::write(&file, "{\"keys\": \"none\"}").unwrap();
    let problems = node.apply(config).expect_err("a broken file is refused");
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].starts_with("apps[0].tokens.jwks_file (") && problems[0].contains("not a JWKS"),
        "{problems:?}"
    );
    assert_eq!(bind(&node, APP, rsa_1).await, Ok(()));
}

#[tokio::test]
async fn a_reload_fetches_at_once_and_keeps_the_keys_while_the_provider_is_down() {
    const APP: &str = "idp-reload";
    let idp = Idp::start(vec![jwk(Algorithm::RS256, "k1")]).await;
    let config = config(APP, |t| t.jwks_url = Some(idp.url.clone()));
    let node = Arc::new(start(config.clone()).await);
    let k1 = signed(APP, Algorithm::RS256, "k1");
    assert_eq!(bind(&node, APP, k1.clone()).await, Ok(()));

    // Off the async threads, as SIGHUP and the admin route reload.
    let reload = |node: &Arc<Node>| {
        let (node, config) = (node.clone(), config.clone());
        tokio::task::spawn_blocking(move || node.apply(config))
    };
    idp.fail();
    reload(&node).await.unwrap().expect("the reload");
    until_fetched(&idp, 2).await;
    assert_eq!(bind(&node, APP, k1).await, Ok(()), "the keys stay in force");

    idp.publish(vec![jwk(Algorithm::ES256, "k2")]);
    reload(&node).await.unwrap().expect("the reload");
    // Counted once the keys are in force: no client has to ask for them.
    let began = Instant::now();
    while fetch_metric(&node, APP, "ok").await < 2.0 {
        assert!(began.elapsed() < WAIT, "the reload's fetch did not succeed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        bind(&node, APP, signed(APP, Algorithm::ES256, "k2")).await,
        Ok(())
    );
    // The first reload's refresher would have retried its failure after 1 s had it not
    // ended with the rules it belonged to.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        idp.fetches(),
        3,
        "one fetch per reload, none from replaced refreshers"
    );
}

/// Waits (bounded) until the provider has answered `n` fetches.
async fn until_fetched(idp: &Idp, n: usize) {
    let began = Instant::now();
    while idp.fetches() < n {
        assert!(began.elapsed() < WAIT, "{} fetches, not {n}", idp.fetches());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
