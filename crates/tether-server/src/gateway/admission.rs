//! Who may connect: the node's connection limit and the per-IP limit, checked before a
//! handshake starts; a [`Permit`] holds a connection's place until it ends.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tether_proto::Code;

use super::Gateway;

/// The global and per-IP connection limits.
#[derive(Debug)]
pub(super) struct Admission {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection, and the gateway that admitted it; dropping it gives the slot
/// back. Owned, so that a parked connection keeps it without a task, and the connection's
/// only reference to the gateway, so that a parked connection holds one `Arc` and not two.
pub(super) struct Permit {
    gw: Arc<Gateway>,
    /// The client's address, canonical, as IPv6 (IPv4 mapped): 16 bytes where an `IpAddr`
    /// takes 17 and its padding, which keeps a parked connection's waker in a smaller chunk.
    ip: [u8; 16],
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit").field("ip", &self.ip()).finish()
    }
}

impl Permit {
    /// A place on `gw` for a connection from `ip`, or the code it is refused with.
    pub fn admit(gw: &Arc<Gateway>, ip: IpAddr) -> Result<Permit, Code> {
        let ip = ip.to_canonical();
        gw.admission.admit(ip)?;
        let ip = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        Ok(Permit { gw: gw.clone(), ip })
    }

    /// The gateway that admitted the connection.
    pub fn gw(&self) -> &Arc<Gateway> {
        &self.gw
    }

    fn ip(&self) -> IpAddr {
        Ipv6Addr::from(self.ip).to_canonical()
    }
}

impl Admission {
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Admission {
            max_total,
            max_per_ip,
            total: AtomicUsize::new(0),
            per_ip: Mutex::default(),
        }
    }

    /// Counts a connection from `ip` (canonical), or says the code it is refused with.
    fn admit(&self, ip: IpAddr) -> Result<(), Code> {
        if self.total.fetch_add(1, Ordering::Relaxed) >= self.max_total {
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Code::CONNECTION_LIMIT);
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let count = per_ip.entry(ip).or_insert(0);
        if *count >= self.max_per_ip {
            drop(per_ip);
            self.total.fetch_sub(1, Ordering::Relaxed);
            return Err(Code::IP_LIMIT);
        }
        *count += 1;
        Ok(())
    }

    /// A connection from `ip` (canonical) is over.
    fn release(&self, ip: IpAddr) {
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                per_ip.remove(&ip);
            }
        }
        drop(per_ip);
        self.total.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gw.admission.release(self.ip());
    }
}
