//! Endpoint selection. Runs per request: no locks; selection reads atomics only.
//!
//! Every algorithm skips unavailable endpoints (unhealthy or ejected) and, on a retry, the
//! endpoint that just failed when another one is available.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use gantry_config::{HashKeySpec, LoadBalancerSpec};
use http::header::COOKIE;
use http::HeaderName;
use xxhash_rust::xxh3::xxh3_64;

use super::Endpoint;

/// Points per unit of weight on the consistent-hash ring (ketama uses 160 per server).
const RING_POINTS_PER_WEIGHT: u32 = 160;
/// Upper bound on the weighted round-robin schedule length.
const MAX_SCHEDULE: u64 = 10_000;

/// A load-balancing algorithm with its precomputed data.
#[derive(Debug)]
pub enum Balancer {
    /// Plain rotation.
    RoundRobin {
        /// Next position.
        next: AtomicUsize,
    },
    /// Smooth weighted round robin, precomputed as a schedule of endpoint positions.
    WeightedRoundRobin {
        /// One full cycle of positions.
        schedule: Vec<usize>,
        /// Next schedule slot.
        next: AtomicUsize,
    },
    /// Fewest requests in flight relative to weight.
    LeastConnections,
    /// Power of two choices on peak-EWMA latency × load.
    Ewma,
    /// Consistent hashing on a request key.
    ConsistentHash {
        /// `(point, endpoint position)`, sorted by point.
        ring: Vec<(u64, usize)>,
        /// What is hashed.
        key: HashKey,
    },
}

/// The request value a consistent hash uses.
#[derive(Debug)]
pub enum HashKey {
    /// A header.
    Header(HeaderName),
    /// A cookie.
    Cookie(String),
    /// Client IP.
    ClientIp,
    /// Request path.
    Path,
}

/// What selection may look at in the request.
#[derive(Clone, Copy, Debug)]
pub struct SelectionInput<'a> {
    /// Request head.
    pub request: &'a http::request::Parts,
    /// Client address.
    pub client: SocketAddr,
}

impl Balancer {
    /// Precomputes the balancer for `endpoints`. Fails on an invalid hash header name.
    pub fn new(spec: &LoadBalancerSpec, endpoints: &[Endpoint]) -> Result<Self, String> {
        Ok(match spec {
            LoadBalancerSpec::RoundRobin => Balancer::RoundRobin { next: AtomicUsize::new(fastrand::usize(..)) },
            LoadBalancerSpec::WeightedRoundRobin => Balancer::WeightedRoundRobin {
                schedule: smooth_weighted_schedule(&endpoints.iter().map(|e| e.weight).collect::<Vec<_>>()),
                next: AtomicUsize::new(0),
            },
            LoadBalancerSpec::LeastConnections => Balancer::LeastConnections,
            LoadBalancerSpec::Ewma => Balancer::Ewma,
            LoadBalancerSpec::ConsistentHash(key) => Balancer::ConsistentHash {
                ring: build_ring(endpoints),
                key: match key {
                    HashKeySpec::Header(name) => HashKey::Header(
                        HeaderName::from_bytes(name.as_bytes())
                            .map_err(|_| format!("`{name}` is not a valid header name"))?,
                    ),
                    HashKeySpec::Cookie(name) => HashKey::Cookie(name.clone()),
                    HashKeySpec::ClientIp => HashKey::ClientIp,
                    HashKeySpec::Path => HashKey::Path,
                },
            },
        })
    }

    /// The position of the endpoint to use, avoiding `avoid` (the one that just failed) when
    /// another is available. `None` when no endpoint is available.
    pub fn select(&self, endpoints: &[Endpoint], input: &SelectionInput<'_>, avoid: Option<usize>) -> Option<usize> {
        let now = Instant::now();
        let usable = |position: usize| {
            endpoints[position].weight > 0 && Some(position) != avoid && endpoints[position].state.is_available(now)
        };
        let chosen = self.select_among(endpoints, input, &usable);
        match (chosen, avoid) {
            (None, Some(failed)) if endpoints[failed].state.is_available(now) => Some(failed),
            _ => chosen,
        }
    }

    fn select_among(
        &self,
        endpoints: &[Endpoint],
        input: &SelectionInput<'_>,
        usable: &dyn Fn(usize) -> bool,
    ) -> Option<usize> {
        let count = endpoints.len();
        match self {
            Balancer::RoundRobin { next } => {
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..count).map(|offset| (start + offset) % count).find(|&position| usable(position))
            }
            Balancer::WeightedRoundRobin { schedule, next } => {
                if schedule.is_empty() {
                    return None;
                }
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..schedule.len())
                    .map(|offset| schedule[(start + offset) % schedule.len()])
                    .find(|&position| usable(position))
            }
            Balancer::LeastConnections => {
                let offset = fastrand::usize(..count.max(1));
                (0..count)
                    .map(|step| (offset + step) % count)
                    .filter(|&position| usable(position))
                    .min_by(|&a, &b| load(&endpoints[a]).total_cmp(&load(&endpoints[b])))
            }
            Balancer::Ewma => {
                let candidates: Vec<usize> = (0..count).filter(|&position| usable(position)).collect();
                match candidates.len() {
                    0 => None,
                    1 => Some(candidates[0]),
                    len => {
                        let first = candidates[fastrand::usize(..len)];
                        let mut second = candidates[fastrand::usize(..len - 1)];
                        if second == first {
                            second = candidates[len - 1];
                        }
                        Some(if ewma_cost(&endpoints[first]) <= ewma_cost(&endpoints[second]) { first } else { second })
                    }
                }
            }
            Balancer::ConsistentHash { ring, key } => {
                if ring.is_empty() {
                    return None;
                }
                let hash = hash_request(key, input);
                let start = ring.partition_point(|(point, _)| *point < hash);
                (0..ring.len()).map(|offset| ring[(start + offset) % ring.len()].1).find(|&position| usable(position))
            }
        }
    }
}

fn load(endpoint: &Endpoint) -> f64 {
    f64::from(endpoint.state.in_flight.load(Ordering::Relaxed)) / f64::from(endpoint.weight.max(1))
}

fn ewma_cost(endpoint: &Endpoint) -> f64 {
    let in_flight = f64::from(endpoint.state.in_flight.load(Ordering::Relaxed));
    // An endpoint with no sample yet costs like a fast one, so it gets tried.
    (endpoint.state.latency_ewma().max(1.0) * (in_flight + 1.0)) / f64::from(endpoint.weight.max(1))
}

fn hash_request(key: &HashKey, input: &SelectionInput<'_>) -> u64 {
    match key {
        HashKey::Header(name) => input.request.headers.get(name).map_or(0, |value| xxh3_64(value.as_bytes())),
        HashKey::Cookie(name) => {
            cookie_value(&input.request.headers, name).map_or(0, |value| xxh3_64(value.as_bytes()))
        }
        HashKey::ClientIp => match input.client.ip() {
            std::net::IpAddr::V4(ip) => xxh3_64(&ip.octets()),
            std::net::IpAddr::V6(ip) => xxh3_64(&ip.octets()),
        },
        HashKey::Path => xxh3_64(input.request.uri.path().as_bytes()),
    }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie_value<'h>(headers: &'h http::HeaderMap, name: &str) -> Option<&'h str> {
    headers.get_all(COOKIE).iter().filter_map(|value| value.to_str().ok()).flat_map(|value| value.split(';')).find_map(
        |pair| {
            let (key, value) = pair.trim().split_once('=')?;
            (key == name).then_some(value)
        },
    )
}

/// The ring: each endpoint gets points in proportion to its weight, hashed from its address
/// so that adding or removing one endpoint moves only the keys it owns.
fn build_ring(endpoints: &[Endpoint]) -> Vec<(u64, usize)> {
    let mut ring = Vec::new();
    for (position, endpoint) in endpoints.iter().enumerate() {
        for replica in 0..endpoint.weight.saturating_mul(RING_POINTS_PER_WEIGHT) {
            let point = xxh3_64(format!("{}-{replica}", endpoint.address).as_bytes());
            ring.push((point, position));
        }
    }
    ring.sort_unstable();
    ring
}

/// One cycle of nginx's smooth weighted round robin: each endpoint appears `weight` times
/// (after dividing by the common divisor), spread out rather than in bursts.
fn smooth_weighted_schedule(weights: &[u32]) -> Vec<usize> {
    let divisor = weights.iter().copied().filter(|w| *w > 0).fold(0, gcd).max(1);
    let mut reduced: Vec<u64> = weights.iter().map(|w| u64::from(*w / divisor)).collect();
    let mut total: u64 = reduced.iter().sum();
    if total > MAX_SCHEDULE {
        let scale = total.div_ceil(MAX_SCHEDULE);
        for weight in &mut reduced {
            if *weight > 0 {
                *weight = (*weight / scale).max(1);
            }
        }
        total = reduced.iter().sum();
    }
    let mut current = vec![0i64; reduced.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (slot, weight) in current.iter_mut().zip(&reduced) {
            *slot += *weight as i64;
        }
        let Some((best, _)) = current.iter().enumerate().max_by_key(|(position, value)| (**value, -(*position as i64)))
        else {
            break;
        };
        current[best] -= total as i64;
        schedule.push(best);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[cfg(test)]
mod tests;
