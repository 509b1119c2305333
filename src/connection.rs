//! What one client connection carries from request to request: the tenant it counts against.
//!
//! A tenant that opens many connections and trickles request bodies through them could hold
//! every connection the listener has (`server.max_connections`), and another tenant would get
//! 503. So a connection counts against the tenant of its latest request (`limits.max_connections`):
//! its first request takes one of that tenant's connection permits, a request of another tenant
//! on the same connection moves it, and the permit is given back when the connection closes.
//! A request that finds the tenant's connections all taken is refused (503) and its connection
//! closed (`server.rs`).
use crate::limits::LimitError;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// One connection's hold on a tenant's connection cap.
#[derive(Default)]
pub struct Slot {
    held: Mutex<Option<Held>>,
    /// The names of the client certificate the connection was opened with (TLS with client
    /// certificates; empty otherwise): fixed for the connection's life.
    peer: Vec<String>,
}

struct Held {
    tenant: String,
    /// The semaphore the permit came from: a reload builds new limits, and the connection then
    /// moves to the new semaphore on its next request.
    from: Arc<Semaphore>,
    _permit: OwnedSemaphorePermit,
}

impl Slot {
    /// A connection whose client presented a certificate with these names.
    pub fn with_peer(peer: Vec<String>) -> Slot {
        Slot { held: Mutex::default(), peer }
    }

    /// The client certificate's names (SAN URIs and DNS names).
    pub fn peer(&self) -> &[String] {
        &self.peer
    }

    /// Counts this connection against `tenant`'s cap (`cap`: its semaphore and whether the
    /// tenant's limits are in shadow mode), or refuses. Without a cap the connection holds nothing.
    pub fn bind(&self, tenant: &str, cap: Option<(&Arc<Semaphore>, bool)>) -> Result<(), LimitError> {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let Some((sem, shadow)) = cap else {
            *held = None;
            return Ok(());
        };
        if held.as_ref().is_some_and(|h| h.tenant == tenant && Arc::ptr_eq(&h.from, sem)) {
            return Ok(());
        }
        *held = None;
        match sem.clone().try_acquire_owned() {
            Ok(permit) => {
                *held = Some(Held { tenant: tenant.to_owned(), from: sem.clone(), _permit: permit });
                Ok(())
            }
            Err(_) if shadow => {
                tracing::info!(tenant, "tenant connection cap exceeded (shadow mode: not refused)");
                Ok(())
            }
            Err(_) => Err(LimitError::Connections),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_holds_one_permit_of_its_latest_tenant() {
        let (a, b) = (Arc::new(Semaphore::new(1)), Arc::new(Semaphore::new(1)));
        let (one, two) = (Slot::default(), Slot::default());
        one.bind("a", Some((&a, false))).unwrap();
        one.bind("a", Some((&a, false))).unwrap(); // the same connection again: no second permit
        assert!(matches!(two.bind("a", Some((&a, false))), Err(LimitError::Connections)));
        assert!(two.bind("a", Some((&a, true))).is_ok(), "shadow mode refuses nothing");
        one.bind("b", Some((&b, false))).unwrap(); // moved to b: a's permit is free again
        two.bind("a", Some((&a, false))).unwrap();
        drop(two);
        assert_eq!(a.available_permits(), 1, "a closed connection gives its permit back");
        assert_eq!(b.available_permits(), 0);
    }
}
