//! [`RedisRegistry`] against the test server (see `tether_redis::testing`: each test has a
//! prefix of its own, and is skipped outside CI when no server answers).

use std::time::Instant;

use tether_core::contract::registry_contract;
use tether_core::{
    AppId, ConnId, DeviceId, Membership, NodeId, NodeInfo, Session, Sessions, Transport, UserId,
    now_ms,
};
use tether_redis::{Keys, Redis, RedisOptions, RedisRegistry, testing};

fn session(app: &str, user: &str, node: &str, conn: u64) -> Session {
    Session {
        app: app.into(),
        user: user.into(),
        node: node.into(),
        conn: ConnId(conn),
        device: DeviceId::from("device"),
        transport: Transport::Ws,
        connected_at_ms: 1_763_000_000_000 + conn,
    }
}

fn node(id: &str, expires_ms: u64) -> NodeInfo {
    NodeInfo {
        id: id.into(),
        endpoints: vec![format!("tcp://{id}:7400")],
        connections: 0,
        max_connections: 1000,
        draining: false,
        zone: String::new(),
        expires_ms,
    }
}

async fn registry(test: &str) -> Option<(RedisRegistry, RedisOptions)> {
    let options = testing::options(test).await?;
    Some((RedisRegistry::connect(&options).await.unwrap(), options))
}

fn conns(mut sessions: Vec<Session>) -> Vec<(String, u64)> {
    let mut out: Vec<_> = sessions
        .drain(..)
        .map(|s| (s.node.to_string(), s.conn.0))
        .collect();
    out.sort();
    out
}

#[tokio::test]
async fn redis_registry_passes_the_contract() {
    let Some((reg, options)) = registry("registry-contract").await else {
        return;
    };
    registry_contract(&reg).await;
    testing::clear(&options).await.unwrap();
}

#[tokio::test]
async fn a_dead_node_is_reaped_unless_it_announced_again() {
    let Some((reg, options)) = registry("registry-reap").await else {
        return;
    };
    let (app, users) = (AppId::from("a"), [UserId::from("u1"), UserId::from("u2")]);
    let now = now_ms();
    assert!(!reg.announce(node("dead", now + 1_000)).await.unwrap());
    assert!(!reg.announce(node("renewed", now + 1_000)).await.unwrap());
    let dead = [
        session("a", "u1", "dead", 1),
        session("a", "u1", "dead", 2),
        session("a", "u2", "dead", 3),
    ];
    for s in dead.iter().cloned().chain([
        session("a", "u1", "renewed", 1),
        session("a", "u2", "renewed", 2),
    ]) {
        reg.register(s).await.unwrap();
    }
    assert_eq!(reg.reap(now).await.unwrap(), 0, "nobody expired yet");
    assert!(
        reg.announce(node("renewed", now + 600_000)).await.unwrap(),
        "the renewed node's announcement was still held"
    );
    // The dispatcher sees the dead node gone before any reap: that must not hide it from
    // the reap.
    let live: Vec<_> = reg.nodes(now + 1_000).await.unwrap();
    assert_eq!(live.len(), 1);
    assert_eq!(live[0].id.as_str(), "renewed");

    assert_eq!(reg.reap(now + 1_000).await.unwrap(), 3);
    assert_eq!(
        conns(reg.sessions(&app, &users).await.unwrap()),
        [("renewed".into(), 1), ("renewed".into(), 2)],
        "the dead node's sessions went, the renewed node's stayed"
    );
    assert_eq!(reg.app_session_count(&app).await.unwrap(), 2);
    assert_eq!(
        reg.reap(now + 1_000).await.unwrap(),
        0,
        "a reaped node is reaped once"
    );

    // The dead node comes back: told to register again, it does, and is counted once.
    assert!(!reg.announce(node("dead", now + 600_000)).await.unwrap());
    reg.register_all(dead.to_vec()).await.unwrap();
    reg.register_all(dead.to_vec()).await.unwrap();
    assert_eq!(reg.sessions(&app, &users).await.unwrap().len(), 5);
    assert_eq!(reg.app_session_count(&app).await.unwrap(), 5);
    testing::clear(&options).await.unwrap();
}

#[tokio::test]
async fn register_all_registers_a_thousand_sessions() {
    let Some((reg, options)) = registry("registry-register-all").await else {
        return;
    };
    let sessions: Vec<Session> = (0..1_000)
        .map(|i| session("a", &format!("user-{}", i % 250), &format!("n{}", i % 2), i))
        .collect();
    let started = Instant::now();
    reg.register_all(sessions.clone()).await.unwrap();
    eprintln!("register_all: 1,000 sessions in {:?}", started.elapsed());

    let app = AppId::from("a");
    let users: Vec<UserId> = (0..250)
        .map(|i| UserId::from(format!("user-{i}").as_str()))
        .collect();
    let mut found = reg.sessions(&app, &users).await.unwrap();
    found.sort_by_key(|s| s.conn);
    assert_eq!(found, sessions, "every session comes back whole");
    assert_eq!(reg.app_session_count(&app).await.unwrap(), 1_000);
    testing::clear(&options).await.unwrap();
}

#[tokio::test]
async fn garbage_in_redis_is_skipped_not_trusted() {
    let Some((reg, options)) = registry("registry-garbage").await else {
        return;
    };
    let keys = Keys::new(&options.prefix);
    let mut redis = Redis::connect(&options).await.unwrap();
    let (app, user) = (AppId::from("a"), UserId::from("u"));
    reg.register(session("a", "u", "n1", 1)).await.unwrap();
    let garbage: [(&[u8], &[u8]); 5] = [
        (b"n1:2", b"short"),
        (b"n1:3", b"x012345678device"),
        (b"no-conn", b"t01234567device"),
        (b"n1:4", b"t01234567\xff\xfe"),
        (b"\xff:5", b"t01234567device"),
    ];
    for (field, value) in garbage {
        redis::cmd("HSET")
            .arg(keys.user("a", "u", "sessions"))
            .arg(field)
            .arg(value)
            .query_async::<()>(&mut redis)
            .await
            .unwrap();
    }
    let found = reg
        .sessions(&app, std::slice::from_ref(&user))
        .await
        .unwrap();
    assert_eq!(conns(found), [("n1".into(), 1)], "only the good session");

    // A garbled announcement is not a node; a garbled member of a dead node is skipped.
    redis::cmd("HSET")
        .arg(keys.global("nodes"))
        .arg("garbled")
        .arg("not an announcement")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let now = now_ms();
    reg.announce(node("n1", now + 1_000)).await.unwrap();
    redis::cmd("SADD")
        .arg(keys.node("n1", "sessions"))
        .arg("99:x:y")
        .query_async::<()>(&mut redis)
        .await
        .unwrap();
    let ids: Vec<String> = reg
        .nodes(now)
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.id.to_string())
        .collect();
    assert_eq!(ids, ["n1"]);
    assert_eq!(reg.reap(now + 1_000).await.unwrap(), 1);
    let left = reg
        .sessions(&app, std::slice::from_ref(&user))
        .await
        .unwrap();
    assert!(left.is_empty(), "the good session of the dead node went");
    reg.unregister(&app, &user, &NodeId::from("n1"), ConnId(1))
        .await
        .unwrap();
    testing::clear(&options).await.unwrap();
}

/// Bytes of Redis memory per session, for the module docs of `registry`. Run alone (other
/// tests move `used_memory`):
/// `cargo test -p tether-redis --test registry -- --ignored --nocapture memory`.
#[tokio::test]
#[ignore = "a measurement: run alone, with --ignored --nocapture"]
async fn memory_per_session() {
    let Some((reg, options)) = registry("registry-memory").await else {
        return;
    };
    let mut redis = Redis::connect(&options).await.unwrap();
    let sessions = |per_user: u64| -> Vec<Session> {
        (0..10_000u64)
            .flat_map(|i| {
                (0..per_user).map(move |k| Session {
                    app: "chat".into(),
                    user: format!("user-{:06}", i).as_str().into(),
                    node: "gw-01".into(),
                    conn: ConnId(100_000 + i * per_user + k),
                    device: format!("{:016x}", i * 7919 + k).as_str().into(),
                    transport: Transport::Tcp,
                    connected_at_ms: 1_763_000_000_000 + i,
                })
            })
            .collect()
    };
    for per_user in [1, 2] {
        let all = sessions(per_user);
        let before = used_memory(&mut redis).await;
        reg.register_all(all.clone()).await.unwrap();
        let after = used_memory(&mut redis).await;
        eprintln!(
            "{} users with {per_user} session(s) each: {} bytes per session \
             (used_memory {before} -> {after})",
            10_000,
            (after - before) / all.len() as i64,
        );
        testing::clear(&options).await.unwrap();
    }
}

async fn used_memory(redis: &mut Redis) -> i64 {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(redis)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .expect("used_memory in INFO memory")
        .trim()
        .parse()
        .unwrap()
}
