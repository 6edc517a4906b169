//! Active health checks: one task per upstream probes each endpoint with `GET <path>` at an
//! interval and flips [`EndpointState::healthy`] after consecutive successes or failures.
//!
//! Tasks outlive snapshots. After each reload, [`HealthCheckers::sync`] keeps the tasks whose
//! settings are unchanged, restarts changed ones and stops those of removed upstreams.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, StatusCode};
use tokio::task::JoinHandle;

use super::{CompiledUpstream, EndpointState, UpstreamClient};
use crate::body::GatewayBody;

/// Active check settings of an upstream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveHealthCheck {
    /// Probe path.
    pub path: String,
    /// Time between probes.
    pub interval: Duration,
    /// Probe time limit.
    pub timeout: Duration,
    /// Successes to become healthy.
    pub healthy_threshold: u32,
    /// Failures to become unhealthy.
    pub unhealthy_threshold: u32,
    /// Healthy statuses; empty means 200–399.
    pub healthy_statuses: Vec<u16>,
}

impl ActiveHealthCheck {
    fn is_healthy_status(&self, status: StatusCode) -> bool {
        if self.healthy_statuses.is_empty() {
            (200..400).contains(&status.as_u16())
        } else {
            self.healthy_statuses.contains(&status.as_u16())
        }
    }
}

/// What a probe task needs, and what decides whether a running task can be kept.
#[derive(Clone, Debug)]
struct ProbePlan {
    check: ActiveHealthCheck,
    scheme: &'static str,
    targets: Vec<(Arc<str>, Arc<EndpointState>)>,
    client: UpstreamClient,
}

impl ProbePlan {
    fn same_as(&self, other: &ProbePlan) -> bool {
        // A changed client (new CA, client certificate, connect timeout) must reach the probes,
        // or an endpoint judged with stale TLS settings would stay unhealthy after the fix.
        self.check == other.check
            && self.scheme == other.scheme
            && self.client.shares_pool_with(&other.client)
            && self.targets.len() == other.targets.len()
            && self.targets.iter().zip(&other.targets).all(|(a, b)| a.0 == b.0 && Arc::ptr_eq(&a.1, &b.1))
    }
}

/// A probe task and the plan it runs.
type RunningProbe = (ProbePlan, JoinHandle<()>);

/// The running probe tasks, by upstream id.
#[derive(Debug, Default)]
pub struct HealthCheckers {
    running: Mutex<HashMap<Arc<str>, RunningProbe>>,
}

impl HealthCheckers {
    /// Makes the running tasks match `upstreams`. Must be called inside a Tokio runtime.
    pub fn sync<'u>(&self, upstreams: impl IntoIterator<Item = &'u Arc<CompiledUpstream>>) {
        let mut running = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut wanted: HashMap<Arc<str>, ProbePlan> = HashMap::new();
        for upstream in upstreams {
            let Some(check) = &upstream.active else { continue };
            wanted.insert(
                upstream.id.clone(),
                ProbePlan {
                    check: check.clone(),
                    scheme: upstream.uri_scheme(),
                    targets: upstream.endpoints.iter().map(|e| (e.address.clone(), e.state.clone())).collect(),
                    client: upstream.client.clone(),
                },
            );
        }
        running.retain(|id, (plan, task)| {
            let keep = wanted.get(id).is_some_and(|next| next.same_as(plan));
            if !keep {
                task.abort();
                // Traffic must not stay blocked by a verdict no task will revisit.
                for (_, state) in &plan.targets {
                    state.healthy.store(true, Ordering::Relaxed);
                }
            }
            keep
        });
        for (id, plan) in wanted {
            if running.contains_key(&id) {
                continue;
            }
            let task = tokio::spawn(probe_loop(id.clone(), plan.clone()));
            running.insert(id, (plan, task));
        }
    }

    /// Stops every task.
    pub fn stop_all(&self) {
        let mut running = self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for (_, (_, task)) in running.drain() {
            task.abort();
        }
    }
}

impl Drop for HealthCheckers {
    fn drop(&mut self) {
        self.stop_all();
    }
}

async fn probe_loop(upstream: Arc<str>, plan: ProbePlan) {
    let mut streaks: Vec<(u32, u32)> = vec![(0, 0); plan.targets.len()];
    let mut ticker = tokio::time::interval(plan.check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let probes = plan.targets.iter().map(|(address, _)| probe(&plan, address));
        let results = futures_util::future::join_all(probes).await;
        for (position, passed) in results.into_iter().enumerate() {
            let (address, state) = &plan.targets[position];
            let (successes, failures) = &mut streaks[position];
            if passed {
                *successes += 1;
                *failures = 0;
            } else {
                *failures += 1;
                *successes = 0;
            }
            let healthy = state.healthy.load(Ordering::Relaxed);
            if !healthy && *successes >= plan.check.healthy_threshold {
                state.healthy.store(true, Ordering::Relaxed);
                tracing::info!(upstream = &*upstream, endpoint = &**address, "endpoint healthy again");
            } else if healthy && *failures >= plan.check.unhealthy_threshold {
                state.healthy.store(false, Ordering::Relaxed);
                tracing::warn!(upstream = &*upstream, endpoint = &**address, "endpoint failed its health checks");
            }
        }
    }
}

async fn probe(plan: &ProbePlan, address: &Arc<str>) -> bool {
    let request = match Request::get(&plan.check.path).header(http::header::HOST, &**address).body(GatewayBody::Empty) {
        Ok(request) => request,
        Err(_) => return false,
    };
    let Ok(pool) = plan.client.pool_for(address) else { return false };
    let deadline = tokio::time::Instant::now() + plan.check.timeout;
    match tokio::time::timeout_at(deadline, plan.client.send(&pool, request)).await {
        Ok(Ok(response)) => {
            let healthy = plan.check.is_healthy_status(response.status());
            // The status decides. The body is read to its end only so that its connection goes
            // back to the pool for the next probe; a long or slow one is left, and closed.
            let body = http_body_util::Limited::new(response.into_body(), PROBE_BODY_KEPT);
            let _ = tokio::time::timeout_at(deadline, http_body_util::BodyExt::collect(body)).await;
            healthy
        }
        _ => false,
    }
}

/// The longest probe answer read to its end to keep its connection.
const PROBE_BODY_KEPT: usize = 64 * 1024;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::client::tests::{settings, start_counting_server};

    /// Probes read their answers to the end, so one kept-alive connection serves them all.
    #[tokio::test]
    async fn probes_reuse_one_connection() {
        let (address, accepted) = start_counting_server(usize::MAX).await;
        let address: Arc<str> = address.to_string().into();
        let client = UpstreamClient::new(&settings()).expect("client");
        let check = ActiveHealthCheck {
            path: "/healthz".to_owned(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(2),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            healthy_statuses: Vec::new(),
        };
        let plan = ProbePlan { check, scheme: "http", targets: Vec::new(), client };
        for _ in 0..3 {
            assert!(probe(&plan, &address).await, "the endpoint answers 200");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }
}
