//! Registry changes the node could not make (the registry was unreachable or slow), kept to be
//! retried: only those, so that a registry that fails a few calls under load is not answered
//! with a re-registration of every session.

use std::collections::HashSet;
use std::sync::Mutex;

use tether_core::{AppId, ConnId, UserId};

/// Past this many pending changes the node registers everything again instead.
const MAX_PENDING: usize = 65_536;

#[derive(Debug, Default)]
pub struct Unsynced {
    inner: Mutex<Pending>,
}

/// What to retry.
#[derive(Debug, Default)]
pub struct Pending {
    /// Connections whose sessions may be missing from the registry.
    pub register: HashSet<ConnId>,
    /// Sessions of closed connections the registry may still hold.
    pub unregister: Vec<(AppId, UserId, ConnId)>,
    /// Register every session again and drop the registry's extra ones: the registry lost
    /// the node, or too much is pending.
    pub everything: bool,
}

impl Pending {
    pub fn is_empty(&self) -> bool {
        !self.everything && self.register.is_empty() && self.unregister.is_empty()
    }
}

impl Unsynced {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn register_failed(&self, conn: ConnId) {
        let mut p = self.lock();
        if p.register.len() < MAX_PENDING {
            p.register.insert(conn);
        } else {
            p.everything = true;
        }
    }

    pub fn unregister_failed(&self, app: AppId, user: UserId, conn: ConnId) {
        let mut p = self.lock();
        if p.unregister.len() < MAX_PENDING {
            p.unregister.push((app, user, conn));
        } else {
            p.everything = true;
        }
    }

    /// The registry may hold nothing of this node, or anything.
    pub fn everything(&self) {
        self.lock().everything = true;
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// What is pending, leaving nothing.
    pub fn take(&self) -> Pending {
        std::mem::take(&mut *self.lock())
    }
}
