//! One upstream fetch per key at a time (the cache lock): the first miss of a key leads, later
//! ones wait for it, up to a bound, and then look in the store again. The leader holds a
//! [`Lead`] until its response is stored or known not to be; dropping it, however that
//! happens (stored, not storable, the client gone), wakes the waiters.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_state::response_cache::CacheKey;
use tokio::sync::watch;

/// The fetches in flight, by key.
#[derive(Debug, Default)]
pub struct Flights {
    running: Mutex<HashMap<CacheKey, watch::Receiver<()>>>,
}

/// The fetch of one key, held by the request that leads it.
#[derive(Debug)]
pub struct Lead {
    flights: Arc<Flights>,
    key: CacheKey,
    done: watch::Sender<()>,
}

/// A fetch another request leads.
#[derive(Debug)]
pub struct Follow(watch::Receiver<()>);

impl Flights {
    /// Leads the fetch of `key`, or follows the one already running.
    pub fn join(self: &Arc<Self>, key: &CacheKey) -> Result<Lead, Follow> {
        let mut running = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(receiver) = running.get(key) {
            return Err(Follow(receiver.clone()));
        }
        let (done, receiver) = watch::channel(());
        running.insert(key.clone(), receiver);
        Ok(Lead { flights: self.clone(), key: key.clone(), done })
    }

    /// Leads the fetch of `key` unless one runs already.
    pub fn try_lead(self: &Arc<Self>, key: &CacheKey) -> Option<Lead> {
        self.join(key).ok()
    }

    /// Fetches running now.
    #[cfg(test)]
    pub fn running(&self) -> usize {
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).len()
    }
}

impl Follow {
    /// Waits until the leader is done, or `at_most`; true when the leader finished.
    pub async fn wait(mut self, at_most: Duration) -> bool {
        // The leader never sends; dropping its sender ends `changed` with an error.
        tokio::time::timeout(at_most, self.0.changed()).await.is_ok()
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        let mut running = self.flights.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // Only this lead's entry: after a timeout another request may lead the same key.
        if running.get(&self.key).is_some_and(|receiver| receiver.same_channel(&self.done.subscribe())) {
            running.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CacheKey {
        CacheKey::new(Arc::from("route"), "host", "/path", "digest")
    }

    #[tokio::test]
    async fn the_first_leads_and_the_others_wake_when_it_is_done() {
        let flights = Arc::new(Flights::default());
        let lead = flights.join(&key()).expect("the first leads");
        let follow = flights.join(&key()).expect_err("the second follows");
        assert!(flights.try_lead(&key()).is_none());
        let waiting = tokio::spawn(follow.wait(Duration::from_secs(10)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "waits while the leader fetches");
        drop(lead);
        assert!(waiting.await.expect("joins"), "woken by the leader, not the bound");
        assert_eq!(flights.running(), 0);
        assert!(flights.try_lead(&key()).is_some(), "the next miss leads again");
    }

    #[tokio::test]
    async fn a_follower_gives_up_after_its_bound() {
        let flights = Arc::new(Flights::default());
        let _lead = flights.join(&key()).expect("leads");
        let follow = flights.join(&key()).expect_err("follows");
        assert!(!follow.wait(Duration::from_millis(30)).await);
    }
}
