//! tether's Redis backends: the registry, the store and the router of the cluster mode.
//!
//! # Layout
//!
//! - this module: [`RedisOptions`], [`Redis`] (one multiplexed connection to a standalone
//!   server or a Redis Cluster, chosen from the URLs) and [`Keys`], the key layout.
//! - [`store`]: [`RedisStore`], durable inboxes, topic histories and server-side
//!   subscriptions.
//! - [`registry`]: [`RedisRegistry`], sessions and node announcements.
//! - [`router`]: [`RedisRouter`], node-to-node deliveries over pub/sub (sharded pub/sub on
//!   Redis Cluster), one channel per node.
//! - `testing` (the `testing` feature, for tests): how tests find a Redis server, keep out of
//!   each other's keys, and start a Redis Cluster or a TLS server of their own.
//!
//! # Keys and slots
//!
//! Every key starts with the configured prefix. Keys of one (app, user) share the hash tag
//! `{u:app:user}`, so that an inbox, its seq counter, its device cursors, the user's
//! subscriptions and sessions live in one slot of a Redis Cluster: a Lua script can change them
//! atomically. A topic's keys share `{t:app:topic}`; an app's idempotency keys `{a:app}`. Ids
//! are escaped (`%`, `{`, `}` and `:` as `%25`, `%7B`, `%7D`, `%3A`), so that no id can end a
//! hash tag early or make two different (app, user) pairs spell the same key.

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, Value};

pub mod registry;
pub mod router;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use redis;
pub use registry::RedisRegistry;
pub use router::RedisRouter;
pub use store::RedisStore;

/// Where Redis is and how to talk to it.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// `redis://host:port[/db]` (or `rediss://` for TLS) of a standalone server, or the seed
    /// nodes of a Redis Cluster when `cluster` is set.
    pub urls: Vec<String>,
    /// The URLs are seeds of a Redis Cluster.
    pub cluster: bool,
    /// Every key starts with it (several deployments, or tests, can share one Redis).
    pub prefix: String,
    /// How long one command may take before it counts as failed.
    pub timeout: Duration,
    /// With `rediss://` URLs: the CA certificates (PEM) that Redis' certificate must chain to,
    /// instead of the public roots (a private CA, as Redis deployments usually have).
    pub tls_ca: Option<Vec<u8>>,
}

impl RedisOptions {
    /// One standalone server, prefix `tether`, 2 s timeout.
    pub fn standalone(url: impl Into<String>) -> Self {
        RedisOptions {
            urls: vec![url.into()],
            cluster: false,
            prefix: "tether".into(),
            timeout: Duration::from_secs(2),
            tls_ca: None,
        }
    }

    /// A client for one server, with the TLS roots of these options.
    pub fn client(
        &self,
        info: impl redis::IntoConnectionInfo,
    ) -> redis::RedisResult<redis::Client> {
        install_crypto();
        match &self.tls_ca {
            None => redis::Client::open(info),
            Some(ca) => redis::Client::build_with_tls(info, self.certificates(ca)),
        }
    }

    /// A Redis Cluster client builder for these seeds, with the TLS roots of these options.
    pub fn cluster_builder(&self) -> redis::cluster::ClusterClientBuilder {
        install_crypto();
        let builder = redis::cluster::ClusterClient::builder(self.urls.clone())
            .connection_timeout(self.timeout)
            .response_timeout(self.timeout);
        match &self.tls_ca {
            None => builder,
            Some(ca) => builder.certs(self.certificates(ca)),
        }
    }

    fn certificates(&self, ca: &[u8]) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(ca.to_vec()),
        }
    }
}

/// rustls needs one process-wide crypto provider; the first caller installs ring's (a
/// provider installed by someone else first is kept).
fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A multiplexed connection to Redis that reconnects on its own. Cheap to clone: clones share
/// one connection (per cluster node).
#[derive(Clone)]
pub enum Redis {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
}

impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Redis::Standalone(_) => f.write_str("Redis::Standalone"),
            Redis::Cluster(_) => f.write_str("Redis::Cluster"),
        }
    }
}

impl Redis {
    /// Connects (and for a cluster, reads the slot map). Fails when no server answers.
    pub async fn connect(options: &RedisOptions) -> redis::RedisResult<Redis> {
        if options.cluster {
            let client = options.cluster_builder().build()?;
            Ok(Redis::Cluster(client.get_async_connection().await?))
        } else {
            let url = options.urls.first().ok_or_else(|| {
                redis::RedisError::from((redis::ErrorKind::InvalidClientConfig, "no Redis URL"))
            })?;
            let client = options.client(url.as_str())?;
            let config = ConnectionManagerConfig::new()
                .set_connection_timeout(Some(options.timeout))
                .set_response_timeout(Some(options.timeout))
                .set_number_of_retries(2)
                .set_max_delay(Duration::from_secs(1));
            Ok(Redis::Standalone(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }
    }

    /// Whether this is a Redis Cluster connection (multi-key commands must then stay in one
    /// slot, and a pipeline must too).
    pub fn is_cluster(&self) -> bool {
        matches!(self, Redis::Cluster(_))
    }
}

impl ConnectionLike for Redis {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Redis::Standalone(c) => c.req_packed_command(cmd),
            Redis::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Redis::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Redis::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Redis::Standalone(c) => c.get_db(),
            Redis::Cluster(c) => c.get_db(),
        }
    }
}

/// The key layout (see the module docs). Every backend builds its keys here, so that the slot
/// rules hold in one place.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// A key of one (app, user): `<prefix>:{u:<app>:<user>}:<what>`.
    pub fn user(&self, app: &str, user: &str, what: &str) -> String {
        format!(
            "{}:{{u:{}:{}}}:{what}",
            self.prefix,
            escape(app),
            escape(user)
        )
    }

    /// A key of one (app, topic): `<prefix>:{t:<app>:<topic>}:<what>`.
    pub fn topic(&self, app: &str, topic: &str, what: &str) -> String {
        format!(
            "{}:{{t:{}:{}}}:{what}",
            self.prefix,
            escape(app),
            escape(topic)
        )
    }

    /// A key of one app: `<prefix>:{a:<app>}:<what>`.
    pub fn app(&self, app: &str, what: &str) -> String {
        format!("{}:{{a:{}}}:{what}", self.prefix, escape(app))
    }

    /// A key of one node: `<prefix>:{n:<node>}:<what>`.
    pub fn node(&self, node: &str, what: &str) -> String {
        format!("{}:{{n:{}}}:{what}", self.prefix, escape(node))
    }

    /// A key of the whole deployment (one slot): `<prefix>:{g}:<what>`.
    pub fn global(&self, what: &str) -> String {
        format!("{}:{{g}}:{what}", self.prefix)
    }
}

/// Escapes an id for use inside a key: `%`, `{`, `}` and `:` become `%25`, `%7B`, `%7D`, `%3A`.
pub fn escape(id: &str) -> std::borrow::Cow<'_, str> {
    if !id.contains(['%', '{', '}', ':']) {
        return std::borrow::Cow::Borrowed(id);
    }
    let mut out = String::with_capacity(id.len() + 8);
    for c in id.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            ':' => out.push_str("%3A"),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

/// A Redis error as the seams report it: the backend is unavailable, the caller may retry.
pub fn describe(e: &redis::RedisError) -> String {
    format!("redis: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hash tag of a key as Redis Cluster computes it.
    fn tag(key: &str) -> &str {
        let open = key.find('{').expect("a tag");
        let close = key[open + 1..].find('}').expect("a closing brace") + open + 1;
        &key[open + 1..close]
    }

    #[test]
    fn keys_of_one_user_share_a_tag_whatever_the_ids() {
        let keys = Keys::new("tether");
        for (app, user) in [
            ("a", "b"),
            ("}x", "{y"),
            ("a:b", "c"),
            ("a", "b:c"),
            ("%7D", "}"),
        ] {
            let k1 = keys.user(app, user, "inbox");
            let k2 = keys.user(app, user, "seq");
            assert_eq!(tag(&k1), tag(&k2));
            assert!(!tag(&k1).is_empty());
            assert_eq!(k1.matches('{').count(), 1, "{k1}");
            assert_eq!(k1.matches('}').count(), 1, "{k1}");
        }
        assert_ne!(keys.user("a:b", "c", "x"), keys.user("a", "b:c", "x"));
        assert_ne!(keys.user("%7D", "x", "x"), keys.user("}", "x", "x"));
    }
}
