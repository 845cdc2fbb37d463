//! Which connection serves which identity, and handing stored messages to it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tincan_proto::ids::PeerId;
use tokio::sync::{Notify, mpsc};

use crate::store::Stored;

/// How many live deliveries wait in a connection's queue before it falls back to the store.
pub(crate) const DELIVERY_QUEUE: usize = 1024;

/// The router's handle on one authenticated connection.
pub(crate) struct ConnHandle {
    pub id: u64,
    pub deliveries: mpsc::Sender<Arc<Stored>>,
    /// Set when a delivery did not fit the queue: the connection must re-read the store.
    pub lagging: Arc<AtomicBool>,
    /// Woken to close the connection when another one authenticates as the same identity.
    pub kicked: Arc<Notify>,
}

/// Identity → connection map. One connection per identity: the newest wins.
#[derive(Default)]
pub(crate) struct Router {
    conns: Mutex<HashMap<PeerId, ConnHandle>>,
    next_id: AtomicU64,
    active: AtomicUsize,
    idle: Notify,
    /// HTTP long-polls waiting for an identity's next message.
    waiters: Mutex<HashMap<PeerId, Arc<Notify>>>,
}

impl Router {
    pub fn next_conn_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers `handle` for `peer`, kicking any older connection of the same identity.
    pub fn register(&self, peer: PeerId, handle: ConnHandle) {
        let old = self.lock().insert(peer, handle);
        if let Some(old) = old {
            old.kicked.notify_one();
        }
    }

    /// Removes `peer`'s entry if it still belongs to connection `id`.
    pub fn unregister(&self, peer: &PeerId, id: u64) {
        let mut map = self.lock();
        if map.get(peer).is_some_and(|h| h.id == id) {
            map.remove(peer);
        }
    }

    /// Offers a new message to its recipient's connection, if online. Never blocks: a full
    /// queue marks the connection as lagging and it re-reads the store. Returns whether a live
    /// WebSocket connection took it (an HTTP long-poll is only woken: it reads the store).
    pub fn deliver(&self, to: &PeerId, msg: Arc<Stored>) -> bool {
        {
            let w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = w.get(to) {
                n.notify_waiters();
            }
        }
        let map = self.lock();
        match map.get(to) {
            Some(h) => match h.deliveries.try_send(msg) {
                Ok(()) => true,
                Err(_) => {
                    h.lagging.store(true, Ordering::SeqCst);
                    false
                }
            },
            None => false,
        }
    }

    /// The wake-up an HTTP long-poll for `peer` waits on.
    pub fn waiter(&self, peer: PeerId) -> Arc<Notify> {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        w.entry(peer).or_default().clone()
    }

    /// Forgets `peer`'s wake-up once no long-poll holds it.
    pub fn drop_waiter(&self, peer: &PeerId) {
        let mut w = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if w.get(peer).is_some_and(|n| Arc::strong_count(n) == 1) {
            w.remove(peer);
        }
    }

    /// Number of authenticated connections.
    pub fn online(&self) -> usize {
        self.lock().len()
    }

    pub fn conn_started(&self) {
        self.active.fetch_add(1, Ordering::SeqCst);
    }

    pub fn conn_finished(&self) {
        if self.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.idle.notify_waiters();
        }
    }

    /// Waits until every connection task has ended, or `limit` passes.
    pub async fn wait_idle(&self, limit: Duration) {
        let wait = async {
            while self.active.load(Ordering::SeqCst) > 0 {
                let notified = self.idle.notified();
                if self.active.load(Ordering::SeqCst) == 0 {
                    break;
                }
                notified.await;
            }
        };
        let _ = tokio::time::timeout(limit, wait).await;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, ConnHandle>> {
        // A panic while holding this lock cannot leave the map inconsistent (single inserts and
        // removes), so a poisoned lock is still usable.
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }
}
