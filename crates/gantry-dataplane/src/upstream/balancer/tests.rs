use std::sync::Arc;

use super::*;
use crate::upstream::EndpointState;

fn endpoints(weights: &[u32]) -> Vec<Endpoint> {
    weights
        .iter()
        .enumerate()
        .map(|(position, weight)| {
            let address = format!("10.0.0.{}:80", position + 1);
            Endpoint {
                authority: address.parse().expect("authority"),
                address: address.into(),
                weight: *weight,
                state: Arc::new(EndpointState::default()),
                metrics: None,
                pool: Default::default(),
            }
        })
        .collect()
}

fn request(header: Option<&str>) -> http::request::Parts {
    let mut builder = http::Request::builder().uri("/users/1");
    if let Some(value) = header {
        builder = builder.header("x-user", value).header("cookie", format!("a=1; session={value}"));
    }
    builder.body(()).expect("request").into_parts().0
}

fn pick(balancer: &Balancer, endpoints: &[Endpoint], header: Option<&str>) -> usize {
    let parts = request(header);
    let input = SelectionInput { request: &parts, client: "192.0.2.7:1000".parse().expect("addr") };
    balancer.select(endpoints, &input, None).expect("an endpoint is available")
}

#[test]
fn round_robin_visits_every_endpoint_in_turn() {
    let endpoints = endpoints(&[1, 5, 1]);
    let balancer = Balancer::new(&LoadBalancerSpec::RoundRobin, &endpoints).expect("balancer");
    let mut counts = [0; 3];
    for _ in 0..30 {
        counts[pick(&balancer, &endpoints, None)] += 1;
    }
    assert_eq!(counts, [10, 10, 10]);
}

#[test]
fn weighted_round_robin_shares_in_proportion_and_interleaves() {
    let endpoints = endpoints(&[5, 1, 1]);
    let balancer = Balancer::new(&LoadBalancerSpec::WeightedRoundRobin, &endpoints).expect("balancer");
    let picks: Vec<usize> = (0..7).map(|_| pick(&balancer, &endpoints, None)).collect();
    assert_eq!(picks.iter().filter(|p| **p == 0).count(), 5);
    // nginx's smooth sequence for 5:1:1 is a a b a c a a: never five of one in a row.
    assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0]);
}

#[test]
fn skips_unavailable_endpoints() {
    let endpoints = endpoints(&[1, 1]);
    endpoints[0].state.healthy.store(false, Ordering::Relaxed);
    for spec in [
        LoadBalancerSpec::RoundRobin,
        LoadBalancerSpec::WeightedRoundRobin,
        LoadBalancerSpec::LeastConnections,
        LoadBalancerSpec::Ewma,
        LoadBalancerSpec::ConsistentHash(HashKeySpec::Header("x-user".into())),
    ] {
        let balancer = Balancer::new(&spec, &endpoints).expect("balancer");
        for user in ["a", "b", "c", "d"] {
            assert_eq!(pick(&balancer, &endpoints, Some(user)), 1, "{spec:?}");
        }
    }
}

#[test]
fn reports_none_when_every_endpoint_is_down() {
    let endpoints = endpoints(&[1]);
    endpoints[0].state.healthy.store(false, Ordering::Relaxed);
    let balancer = Balancer::new(&LoadBalancerSpec::RoundRobin, &endpoints).expect("balancer");
    let parts = request(None);
    let input = SelectionInput { request: &parts, client: "192.0.2.7:1000".parse().expect("addr") };
    assert_eq!(balancer.select(&endpoints, &input, None), None);
}

#[test]
fn least_connections_prefers_the_idle_endpoint() {
    let endpoints = endpoints(&[1, 1, 1]);
    endpoints[0].state.in_flight.store(3, Ordering::Relaxed);
    endpoints[2].state.in_flight.store(1, Ordering::Relaxed);
    let balancer = Balancer::new(&LoadBalancerSpec::LeastConnections, &endpoints).expect("balancer");
    assert_eq!(pick(&balancer, &endpoints, None), 1);
}

#[test]
fn consistent_hash_is_stable_per_key_and_spreads_keys() {
    let endpoints = endpoints(&[1, 1, 1]);
    for key in [HashKeySpec::Header("x-user".into()), HashKeySpec::Cookie("session".into())] {
        let balancer = Balancer::new(&LoadBalancerSpec::ConsistentHash(key), &endpoints).expect("balancer");
        let mut used = std::collections::HashSet::new();
        for user in 0..60 {
            let user = format!("user-{user}");
            let first = pick(&balancer, &endpoints, Some(&user));
            assert_eq!(pick(&balancer, &endpoints, Some(&user)), first);
            used.insert(first);
        }
        assert_eq!(used.len(), 3, "60 keys should reach all three endpoints");
    }
}

#[test]
fn consistent_hash_moves_few_keys_when_an_endpoint_is_added() {
    let three = endpoints(&[1, 1, 1]);
    let four = endpoints(&[1, 1, 1, 1]);
    let spec = LoadBalancerSpec::ConsistentHash(HashKeySpec::Header("x-user".into()));
    let before = Balancer::new(&spec, &three).expect("balancer");
    let after = Balancer::new(&spec, &four).expect("balancer");
    let moved = (0..1000)
        .filter(|user| {
            let user = format!("user-{user}");
            pick(&before, &three, Some(&user)) != pick(&after, &four, Some(&user))
        })
        .count();
    // Ideal is a quarter of the keys; anything near it is consistent hashing, half would not be.
    assert!(moved < 350, "{moved} of 1000 keys moved");
}

#[test]
fn a_retry_avoids_the_endpoint_that_failed() {
    let endpoints = endpoints(&[1, 1]);
    let balancer = Balancer::new(&LoadBalancerSpec::ConsistentHash(HashKeySpec::Path), &endpoints).expect("balancer");
    let parts = request(None);
    let input = SelectionInput { request: &parts, client: "192.0.2.7:1000".parse().expect("addr") };
    let first = balancer.select(&endpoints, &input, None).expect("endpoint");
    let retry = balancer.select(&endpoints, &input, Some(first)).expect("endpoint");
    assert_ne!(first, retry);
}

#[test]
fn ewma_prefers_the_faster_endpoint() {
    let endpoints = endpoints(&[1, 1]);
    let now = Instant::now();
    endpoints[0].state.record_latency(std::time::Duration::from_millis(200), now);
    endpoints[1].state.record_latency(std::time::Duration::from_millis(2), now);
    let balancer = Balancer::new(&LoadBalancerSpec::Ewma, &endpoints).expect("balancer");
    for _ in 0..20 {
        assert_eq!(pick(&balancer, &endpoints, None), 1);
    }
}
