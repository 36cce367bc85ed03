//! A gateway on the in-memory backends, for unit tests of its parts.

use std::sync::Arc;

use tether_core::{MemoryRegistry, MemoryRouter, MemoryStore, NodeId, Store};
use tether_proto::{ErrorBody, Upstream};

use super::table::ConnTable;
use super::{Events, Gateway};
use crate::config::Config;
use crate::delivery::Delivery;
use crate::delivery::sink::NodeSink;
use crate::fanout::Fanout;
use crate::link::Link;
use crate::metrics::Metrics;
use crate::session::access::Access;
use crate::transport::{Will, Wills};

/// Events nobody listens to.
#[derive(Debug)]
struct Unheard;

impl Events for Unheard {
    fn connected(&self, _: &dyn Link) {}

    fn closed(&self, _: &dyn Link) {}

    fn upstream(&self, _: &dyn Link, _: usize, _: u32, _: Upstream) -> Result<(), ErrorBody> {
        Ok(())
    }
}

impl Wills for Unheard {
    fn will(&self, _: Will) {}
}

/// A gateway of `Config::for_tests`, its node composed as `crate::node` does, in memory.
pub fn gateway() -> Arc<Gateway> {
    let config = Config::for_tests();
    let metrics = Metrics::new();
    let table = Arc::new(ConnTable::new(
        metrics.queue_overflows.clone(),
        metrics.push_deliveries.clone(),
    ));
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let fanout = Fanout::start(&config, store.clone(), table.clone(), Default::default());
    let sink = Arc::new(NodeSink::new(table.clone(), fanout.clone()));
    let node = NodeId::new(config.node.id.clone());
    let delivery = Arc::new(Delivery::new(
        &config,
        Arc::new(MemoryRegistry::new()),
        Arc::new(MemoryRouter::new(node, sink)),
        store,
        fanout,
        table.clone(),
        metrics.clone(),
    ));
    let access = Access::shared(&config).expect("the test config's rules");
    Arc::new(Gateway::new(
        &config,
        access,
        table,
        delivery,
        Arc::new(Unheard),
        metrics,
        Default::default(),
    ))
}
