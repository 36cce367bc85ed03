//! The tether server: gateway, API and node composition.
//!
//! # Layout
//!
//! - [`config`]: the configuration tree, loading, environment overrides, validation, the demo
//!   app.
//! - [`gateway`]: holds client connections (TCP and WebSocket): handshake, heartbeats,
//!   per-connection byte-bounded queues, connection limits.
//! - [`api`]: the HTTP API for business servers (push, presence, kick), health, metrics; and
//!   for clients and operators: readiness, the dispatcher, the admin API (`api::ops`).
//! - [`dispatch`]: the dispatcher's ordering of endpoints (rendezvous hashing over the nodes).
//! - [`lifecycle`]: the node's announcements to the registry, readiness, drain.
//! - [`fanout`]: topics and broadcast: subscriptions, the per-app fan-out worker, pacing.
//! - [`rate`]: per-app rate limits (requests) and pacing (deliveries).
//! - [`metrics`]: Prometheus metrics and the hot-path counter handles.
//! - [`store`]: the embedded durable store (fjall on local disk): one writer thread, group
//!   commit, expiry sweep.
//! - [`node`]: builds the backends (in one place), binds the listeners, runs and shuts down.
//! - [`webhook`]: the upstream role: client upstream data and presence events to each app's
//!   webhook (signed, bounded queues, fixed worker pools, retries), answers back to clients.
//!
//! Every role talks to the others through the seams of `tether-core` (registry, router), never
//! through each other's internals.

pub mod api;
pub mod config;
pub mod dispatch;
pub mod fanout;
pub mod gateway;
pub mod lifecycle;
pub mod metrics;
pub mod node;
pub mod peers;
pub mod rate;
pub mod sink;
pub mod store;
pub mod webhook;

pub use config::Config;
pub use node::{Node, run};
