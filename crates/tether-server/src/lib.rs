//! The tether server: gateway, API and node composition.
//!
//! # Layout
//!
//! - [`node`]: builds the backends (in one place), wires the roles, binds the listeners, runs
//!   and shuts down.
//! - [`descriptors`]: the open-file limit, raised at start, and how many connections it holds
//!   after the descriptors kept for the rest of the node.
//! - [`accept`]: what a listener does when `accept` fails (out of descriptors): back off,
//!   count, recover.
//! - [`config`]: the configuration tree, loading, environment overrides, validation, the demo
//!   app.
//! - [`api`]: the HTTP API for business servers (push, publish, broadcast, presence, kick,
//!   inbox and topic reads), health and metrics; for clients and operators, readiness, the
//!   dispatcher and the admin API (`api::ops`); CORS for the client-facing routes
//!   (`api::cors`). Handlers parse, validate and map errors.
//! - [`delivery`]: the delivery service: every way a message or command reaches connections
//!   (push, publish, broadcast, kick, subscriptions, presence), over the registry, router,
//!   store, fan-out and other nodes; this node's sessions in the registry.
//! - [`gateway`]: holds client connections whatever their transport: admission, handshake,
//!   per-connection byte-bounded queues, heartbeats, parking, drain.
//! - [`edge`]: who may connect, per listener, before a byte is read: IP allow and deny lists,
//!   the per-IP connection rate, origins (WebSocket upgrades, the API's client-facing routes);
//!   refusals counted and logged.
//! - [`transport`]: the transport seam ([`transport::Wire`]) and its two transports, raw TCP
//!   and WebSocket, each over the socket or over TLS ([`transport::Carrier`]).
//! - [`tls`]: the TLS listeners' certificates: read, checked, loaded again when they change.
//! - [`jwks`]: identity providers' key sets fetched from URLs, kept fresh in the background
//!   for the apps' token policies.
//! - [`session`]: the rules every transport's sessions share, as plain code: the handshake's
//!   checks, what each client frame asks for, durable delivery's order, backlog and acks.
//! - [`link`]: a client connection as senders see it ([`link::Link`], [`link::Links`]): what
//!   the fan-out, the webhooks and the delivery service depend on instead of the gateway.
//! - [`fanout`]: topics and broadcast: subscriptions, the per-app fan-out worker, batches,
//!   pacing.
//! - [`webhook`]: the upstream role: client upstream data and presence events to each app's
//!   webhook (signed, bounded queues, fixed worker pools, retries), answers back to clients.
//! - [`lifecycle`]: the node's announcements to the registry, readiness, drain.
//! - [`dispatch`]: the dispatcher's ordering of endpoints (rendezvous hashing over the nodes).
//! - [`rate`]: rate limits (API requests) and pacing (deliveries).
//! - [`metrics`]: every metric's name and registration; the hot-path handles; `catalog`, each
//!   metric's type, help text and buckets; `process`, the process's figures read at scrape time.
//! - [`store`]: the embedded durable store (fjall on local disk): one writer thread, group
//!   commit, expiry sweep.
//!
//! Roles talk to each other through the seams of `tether-core` (registry, router, store) and
//! of this crate ([`link::Link`], [`gateway::Events`], [`transport::Wire`]), never through each
//! other's internals.

pub mod accept;
pub mod api;
pub mod config;
pub mod delivery;
pub mod descriptors;
pub mod dispatch;
pub mod edge;
pub mod fanout;
pub mod gateway;
pub mod jwks;
pub mod lifecycle;
pub mod link;
pub mod metrics;
pub mod node;
pub mod rate;
pub mod reload;
pub mod session;
pub mod store;
pub mod tls;
pub mod transport;
pub mod webhook;

pub use config::Config;
pub use node::{Node, run, run_with};
