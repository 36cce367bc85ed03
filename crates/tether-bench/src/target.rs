//! The servers the load generator drives, behind one interface: open a subscriber (connect,
//! handshake, subscribe to the run's topic), cut the received bytes into message payloads,
//! and publish.
//!
//! | target | subscribers | publishes |
//! |---|---|---|
//! | `tether` | binary TCP (inside TLS with `--tls`): `connect`, then `subscribe` (or only `connect` with `--tether-publish broadcast`) | `POST /v1/apps/{app}/topics/{topic}/publish` (or `/broadcast`) |
//! | `tether --mqtt` | MQTT 3.1.1 to tether's MQTT listener: `CONNECT` (app and token as user name and password), `SUBSCRIBE` qos 0 (none with `--tether-publish broadcast`) | as `tether` |
//! | `nchan` | WebSocket `GET /sub?id=<topic>` | `POST /pub?id=<topic>` |
//! | `mosquitto` | MQTT 3.1.1 `CONNECT`, `SUBSCRIBE` qos 0 | MQTT `PUBLISH` qos 0 on one connection |
//! | `bare` | TCP, one `S` byte | TCP, one `P` byte, then length-prefixed messages |
//!
//! Everything after the handshake runs on the same code path for every target: a subscriber
//! reads into one reused buffer and [`Decoder::next`] finds each message's payload in place
//! (no copy, no allocation per message).
//!
//! # Layout
//! - this file: [`Target`] (what and where), [`Subscriber`] (an open subscriber), the decoder.
//! - [`tether`], [`ws`] (the WebSocket client Nchan needs), [`mqtt`], [`bare`]: one protocol
//!   each, handshake and framing.

use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::time::Duration;

use anyhow::Context;
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use crate::connections::open_socket;
use crate::tls::{Stream, TlsArgs, TlsClient};

pub mod bare;
pub mod mqtt;
pub mod tether;
pub mod ws;

/// tether's `tls://` listener in `bench/tether.toml` (`wss://` is the next port).
pub const TLS_PORT: u16 = 7402;
/// tether's MQTT listener (`listen.mqtt`'s default; `bench/peers/tether.sh` puts it at
/// TETHER_PORT + 83, the same with the default 7400).
pub const MQTT_PORT: u16 = 7483;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Tether,
    Nchan,
    Mosquitto,
    Bare,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Tether => "tether",
            Kind::Nchan => "nchan",
            Kind::Mosquitto => "mosquitto",
            Kind::Bare => "bare",
        }
    }

    /// Where its subscribers connect by default (the ports of `bench/peers/`).
    pub fn default_addr(self) -> SocketAddr {
        let port = match self {
            Kind::Tether => 7400,
            Kind::Nchan => 7700,
            Kind::Mosquitto => 7883,
            Kind::Bare => 7600,
        };
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    /// Whether publishes are HTTP requests with an answer (tether, Nchan) rather than
    /// fire-and-forget messages on one stream (Mosquitto, bare).
    pub fn publishes_over_http(self) -> bool {
        matches!(self, Kind::Tether | Kind::Nchan)
    }
}

/// How tether is published to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TetherPublish {
    /// Subscribers subscribe to the topic; `POST .../topics/{topic}/publish`.
    Topic,
    /// Subscribers only bind the app; `POST /v1/apps/{app}/broadcast`.
    Broadcast,
}

/// The target's command-line options, shared by the scenarios that drive any target.
#[derive(Debug, Clone, clap::Args)]
pub struct TargetArgs {
    #[arg(long, value_enum, default_value = "tether")]
    pub target: Kind,
    /// Where subscribers connect; repeatable: subscriber n goes to the (n mod count)-th
    /// (several nodes of a tether cluster). Default: tether 127.0.0.1:7400 (TCP gateway),
    /// nchan 127.0.0.1:7700, mosquitto 127.0.0.1:7883, bare 127.0.0.1:7600.
    #[arg(long)]
    pub addr: Vec<SocketAddr>,
    /// tether's HTTP API (default 127.0.0.1:7480). Nchan publishes on --addr.
    #[arg(long)]
    pub http: Option<SocketAddr>,
    /// The topic (Nchan channel, MQTT topic) every subscriber joins.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// How many topics each subscriber joins: --topic, then --topic-2 .. --topic-N (tether,
    /// Mosquitto; Nchan and the bare writer take one).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub topics: u16,
    /// tether: the app.
    #[arg(long, default_value = "demo")]
    pub app: String,
    /// tether: the app's token secret.
    #[arg(long, env = "TETHER_APP_SECRET")]
    pub secret: Option<String>,
    /// tether: the app's API key.
    #[arg(long, env = "TETHER_API_KEY")]
    pub api_key: Option<String>,
    /// tether: publish to the topic, or broadcast to every connection of the app.
    #[arg(long, value_enum, default_value = "topic")]
    pub tether_publish: TetherPublish,
    /// tether: the qos of a topic's publications (1: kept in the topic's history).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=1))]
    pub qos: u8,
    /// tether: heartbeat proposed to the server, in seconds (pings go every half of it).
    #[arg(long, default_value_t = 60)]
    pub heartbeat: u64,
    /// Bind subscriber sockets round-robin to 127.0.0.2 .. 127.0.0.(1+N), to get past the
    /// ephemeral port range of one source address. 0: let the kernel choose (automatically
    /// raised past 25,000 connections).
    #[arg(long, default_value_t = 0)]
    pub sources: u8,
    #[command(flatten)]
    pub tls: TlsArgs,
    /// tether: subscribers speak MQTT 3.1.1 to tether's MQTT listener (--addr default
    /// 127.0.0.1:7483) instead of tether's binary protocol; publishes still go through the
    /// HTTP API.
    #[arg(long)]
    pub mqtt: bool,
    /// tether over binary TCP or TLS: send the subscribes once `connected` has come, as an
    /// MQTT client sends its SUBSCRIBE after CONNACK, rather than pipelined behind `connect`.
    #[arg(long)]
    pub wait_connected: bool,
    /// tether over MQTT: subscribers ask for a persistent session (`CONNECT` with Clean
    /// Session 0), which the server keeps and saves in its store.
    #[arg(long, requires = "mqtt")]
    pub mqtt_session: bool,
}

impl TargetArgs {
    /// The target, with defaults filled in and tether's credentials checked. `connections`:
    /// how many connections the run opens (to pick the number of source addresses).
    pub fn target(&self, connections: u64) -> anyhow::Result<Target> {
        let kind = self.target;
        let tls = self.tls.client()?;
        if tls.is_some() && kind != Kind::Tether {
            anyhow::bail!("--tls is for --target tether only");
        }
        if self.mqtt && (kind != Kind::Tether || tls.is_some()) {
            anyhow::bail!("--mqtt is for --target tether, without --tls");
        }
        let addrs = if self.addr.is_empty() {
            vec![match tls {
                Some(_) => SocketAddr::from(([127, 0, 0, 1], TLS_PORT)),
                None if self.mqtt => SocketAddr::from(([127, 0, 0, 1], MQTT_PORT)),
                None => kind.default_addr(),
            }]
        } else {
            self.addr.clone()
        };
        let publish_addr = match kind {
            Kind::Tether => self
                .http
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 7480))),
            _ => addrs[0],
        };
        if kind == Kind::Tether && self.secret.is_none() {
            anyhow::bail!("--target tether needs --secret (or TETHER_APP_SECRET)");
        }
        let sources = match self.sources {
            0 if connections > 25_000 => connections.div_ceil(20_000).min(250) as u8,
            n => n,
        };
        Ok(Target {
            kind,
            addrs,
            publish_addr,
            topic: self.topic.clone(),
            topics: self.topics,
            app: self.app.clone(),
            secret: self.secret.clone().unwrap_or_default(),
            api_key: self.api_key.clone().unwrap_or_default(),
            tether_publish: self.tether_publish,
            qos: self.qos,
            heartbeat_s: self.heartbeat,
            sources,
            tls,
            mqtt: self.mqtt,
            connect_only: false,
            wait_connected: self.wait_connected,
            mqtt_session: self.mqtt_session,
        })
    }
}

/// One server to drive, fully resolved. Serializable: worker processes get it on stdin.
#[derive(Clone, Serialize, Deserialize)]
pub struct Target {
    pub kind: Kind,
    /// Where subscribers connect: subscriber n to `addrs[n % addrs.len()]` (never empty).
    pub addrs: Vec<SocketAddr>,
    pub publish_addr: SocketAddr,
    pub topic: String,
    /// Topics each subscriber joins (see [`Target::topic_names`]).
    pub topics: u16,
    pub app: String,
    pub secret: String,
    pub api_key: String,
    pub tether_publish: TetherPublish,
    /// The qos of a topic's publications.
    pub qos: u8,
    pub heartbeat_s: u64,
    pub sources: u8,
    /// Subscribers connect inside TLS.
    pub tls: Option<TlsClient>,
    /// tether: subscribers speak MQTT to its MQTT listener.
    #[serde(default)]
    pub mqtt: bool,
    /// MQTT subscribers (Mosquitto, tether over MQTT) stop at `CONNACK`: no `SUBSCRIBE`
    /// (`churn --connect-only`, handshakes alone).
    #[serde(default)]
    pub connect_only: bool,
    /// tether's binary protocol: subscribes wait for `connected` (see
    /// [`TargetArgs::wait_connected`]).
    #[serde(default)]
    pub wait_connected: bool,
    /// tether over MQTT: persistent sessions (see [`TargetArgs::mqtt_session`]).
    #[serde(default)]
    pub mqtt_session: bool,
}

impl fmt::Debug for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Target")
            .field("kind", &self.kind)
            .field("addrs", &self.addrs)
            .field("publish_addr", &self.publish_addr)
            .field("topic", &self.topic)
            .field("topics", &self.topics)
            .field("app", &self.app)
            .field("tether_publish", &self.tether_publish)
            .field("sources", &self.sources)
            .field("tls", &self.tls)
            .field("mqtt", &self.mqtt)
            .field("connect_only", &self.connect_only)
            .field("wait_connected", &self.wait_connected)
            .field("mqtt_session", &self.mqtt_session)
            .finish_non_exhaustive()
    }
}

/// `topic`, then `<topic>-2` .. `<topic>-<count>`.
pub fn topic_names(topic: &str, count: u16) -> Vec<String> {
    (1..=count.max(1))
        .map(|i| match i {
            1 => topic.to_owned(),
            i => format!("{topic}-{i}"),
        })
        .collect()
}

/// Largest message a subscriber accepts; anything larger is a protocol error.
pub const MAX_MESSAGE: usize = 1 << 20;

/// An open subscriber past its handshake: the socket, the bytes read past the handshake, and
/// how to read and keep the connection alive.
#[derive(Debug)]
pub struct Subscriber {
    pub stream: Stream,
    pub buf: BytesMut,
    pub decoder: Decoder,
    /// How often to send `ping` (tether only: the others need no keep-alive traffic).
    pub ping: Option<(Duration, Bytes)>,
}

impl Target {
    /// The name results carry: the kind, or `tether-mqtt` for tether over MQTT.
    pub fn name(&self) -> &'static str {
        match (self.kind, self.mqtt) {
            (Kind::Tether, true) => "tether-mqtt",
            (kind, _) => kind.name(),
        }
    }

    /// Where subscriber `n` connects.
    pub fn addr(&self, n: u64) -> SocketAddr {
        self.addrs[(n % self.addrs.len() as u64) as usize]
    }

    /// The topics each subscriber joins: the run's topic, then `<topic>-2` .. `<topic>-N`.
    /// Publications go to the first.
    pub fn topic_names(&self) -> Vec<String> {
        topic_names(&self.topic, self.topics)
    }

    /// Opens subscriber `n` (its source address, tether user `u<n>`, MQTT client id): connects,
    /// completes the handshake, subscribes to the topic.
    pub async fn subscribe(&self, n: u64) -> anyhow::Result<Subscriber> {
        let addr = self.addr(n);
        let tcp = open_socket(addr, self.sources, n)
            .await
            .context("connect")?;
        tcp.set_nodelay(true)?;
        let mut stream = crate::tls::open(tcp, self.tls.as_ref()).await?;
        let mut buf = BytesMut::with_capacity(4096);
        let (decoder, ping) = match self.kind {
            Kind::Tether if self.mqtt => {
                let every = mqtt::tether_handshake(self, &mut stream, &mut buf, n).await?;
                let ping = Bytes::from_static(&mqtt::PINGREQ);
                (Decoder::Mqtt, Some((every, ping)))
            }
            Kind::Tether => {
                let ping = tether::handshake(self, &mut stream, &mut buf, n).await?;
                (Decoder::Tether, Some(ping))
            }
            Kind::Nchan => {
                let path = format!("/sub?id={}", self.topic);
                ws::handshake(&mut stream, &mut buf, &addr.to_string(), &path).await?;
                (Decoder::WebSocket, None)
            }
            Kind::Mosquitto => {
                let topics = match self.connect_only {
                    true => Vec::new(),
                    false => self.topic_names(),
                };
                mqtt::handshake(&mut stream, &mut buf, &format!("bench-{n}"), &topics).await?;
                (Decoder::Mqtt, None)
            }
            Kind::Bare => {
                stream.write_all(&[bare::SUBSCRIBER]).await?;
                (Decoder::Bare, None)
            }
        };
        Ok(Subscriber {
            stream,
            buf,
            decoder,
            ping,
        })
    }
}

/// What a subscriber received, found in place in its read buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    /// A message; the payload is `buf[range]`.
    Payload(Range<usize>),
    /// Something to answer with these bytes (a WebSocket ping's pong).
    Reply(Vec<u8>),
    /// The server reported an error and keeps the connection (tether `error`).
    Notice(String),
    /// The server is closing the connection, and why.
    Closed(String),
    /// Anything else (pongs, acks): nothing to do.
    Skip,
}

/// Cuts one target's byte stream into [`Item`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    Tether,
    WebSocket,
    Mqtt,
    Bare,
}

impl Decoder {
    /// Check, then parse: the next whole item at the front of `buf` and its length, or `None`
    /// when more bytes are needed. The caller advances `buf` by the length once it is done
    /// with the item.
    pub fn next(self, buf: &[u8]) -> anyhow::Result<Option<(usize, Item)>> {
        match self {
            Decoder::Tether => tether::next(buf),
            Decoder::WebSocket => Ok(ws::next(buf, MAX_MESSAGE)?),
            Decoder::Mqtt => Ok(mqtt::next(buf, MAX_MESSAGE)?),
            Decoder::Bare => Ok(bare::next(buf, MAX_MESSAGE)?),
        }
    }
}

#[cfg(test)]
mod tests;
