//! What AI exchanges used, per route, provider and model: tokens, cost, and requests by
//! whether a gateway cache answered; also OpenTelemetry's `gen_ai.client.token.usage`
//! histogram. Counted once per exchange, when its usage is known (for a streamed answer, when
//! the stream ends).
//!
//! Only AI requests come here, and each waits far longer on its provider than a lock takes,
//! so the series sit in one table behind a mutex and are looked up by their labels. The
//! labels stay bounded: routes come from the configuration, providers are a fixed set, and the
//! model is the name the client asked for, which `ai_proxy` answers only when it is one of the
//! route's configured names (any other is refused before there is usage to count). Whatever
//! else finishes usage, past [`MAX_SERIES`] series a new model counts as [`OTHER_MODELS`].
//! Series are kept until the process exits, like the policies' counters.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use gantry_policy_api::ai::AiUsage;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::MetricType;

/// The `model` of usage counted once [`MAX_SERIES`] series exist. Configured model names
/// cannot be confused with it: clients would have to ask for `(other)` and a route name it.
pub const OTHER_MODELS: &str = "(other)";

/// Most series (route, operation, provider, model) counted apart.
pub const MAX_SERIES: usize = 1000;

/// Upper bounds of `gen_ai_client_token_usage`, the ones OpenTelemetry's GenAI semantic
/// conventions advise: 1, 4, 16, ... 4^13 tokens.
const TOKEN_BUCKETS: [f64; 14] = [
    1.0,
    4.0,
    16.0,
    64.0,
    256.0,
    1024.0,
    4096.0,
    16384.0,
    65536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
    67_108_864.0,
];

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct SeriesKey {
    route: Arc<str>,
    operation: &'static str,
    provider: &'static str,
    model: Arc<str>,
}

/// Token counts of one kind (input or output) per exchange, in [`TOKEN_BUCKETS`].
#[derive(Debug, Default)]
struct TokenHistogram {
    /// Per bucket (not cumulative), then `+Inf`.
    counts: [u64; TOKEN_BUCKETS.len() + 1],
    sum: u64,
}

impl TokenHistogram {
    fn observe(&mut self, tokens: u64) {
        let position = TOKEN_BUCKETS.iter().position(|&upper| tokens as f64 <= upper).unwrap_or(TOKEN_BUCKETS.len());
        self.counts[position] += 1;
        self.sum = self.sum.saturating_add(tokens);
    }

    fn encode(&self, mut encoder: prometheus_client::encoding::MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        let buckets: Vec<(f64, u64)> =
            TOKEN_BUCKETS.iter().copied().chain([f64::INFINITY]).zip(self.counts.iter().copied()).collect();
        let count = self.counts.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(self.sum as f64, count, &buckets, None)
    }
}

#[derive(Debug, Default)]
struct Counts {
    input_tokens: u64,
    output_tokens: u64,
    /// `None` until an exchange with a price table is counted.
    cost: Option<f64>,
    cache_hits: u64,
    cache_misses: u64,
    input_usage: TokenHistogram,
    output_usage: TokenHistogram,
}

/// The AI usage counters of the process; outlives snapshots.
#[derive(Debug, Default)]
pub struct AiMetrics {
    series: Mutex<BTreeMap<SeriesKey, Counts>>,
}

impl AiMetrics {
    /// Counts the finished `usage` of an exchange on route `route`.
    pub fn record(&self, route: &Arc<str>, usage: &AiUsage) {
        let mut key = SeriesKey {
            route: route.clone(),
            operation: usage.operation,
            provider: usage.provider,
            model: usage.request_model.clone(),
        };
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        if series.len() >= MAX_SERIES && !series.contains_key(&key) {
            key.model = Arc::from(OTHER_MODELS);
        }
        let counts = series.entry(key).or_default();
        counts.input_tokens = counts.input_tokens.saturating_add(usage.input_tokens);
        counts.output_tokens = counts.output_tokens.saturating_add(usage.output_tokens);
        if let Some(cost) = usage.cost.filter(|cost| cost.is_finite() && *cost >= 0.0) {
            counts.cost = Some(counts.cost.unwrap_or(0.0) + cost);
        }
        if usage.cache_hit {
            counts.cache_hits += 1;
        } else {
            counts.cache_misses += 1;
        }
        counts.input_usage.observe(usage.input_tokens);
        counts.output_usage.observe(usage.output_tokens);
    }

    /// Tokens counted so far for `route`, `provider` and `model`: (input, output).
    pub fn tokens(&self, route: &str, provider: &str, model: &str) -> (u64, u64) {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        series
            .iter()
            .filter(|(key, _)| &*key.route == route && key.provider == provider && &*key.model == model)
            .fold((0, 0), |(input, output), (_, counts)| (input + counts.input_tokens, output + counts.output_tokens))
    }
}

/// The counters of one (route, provider, model), the operations added together.
#[derive(Default)]
struct Totals {
    input_tokens: u64,
    output_tokens: u64,
    cost: Option<f64>,
    cache_hits: u64,
    cache_misses: u64,
}

impl Collector for AiMetrics {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        if series.is_empty() {
            return Ok(());
        }
        let mut totals: BTreeMap<(&str, &str, &str), Totals> = BTreeMap::new();
        for (key, counts) in series.iter() {
            let total = totals.entry((&key.route, key.provider, &key.model)).or_default();
            total.input_tokens += counts.input_tokens;
            total.output_tokens += counts.output_tokens;
            if let Some(cost) = counts.cost {
                total.cost = Some(total.cost.unwrap_or(0.0) + cost);
            }
            total.cache_hits += counts.cache_hits;
            total.cache_misses += counts.cache_misses;
        }
        let labels = |(route, provider, model): (&str, &str, &str)| {
            vec![("route", route.to_owned()), ("provider", provider.to_owned()), ("model", model.to_owned())]
        };
        let with = |mut labels: Vec<(&'static str, String)>, name: &'static str, value: &str| {
            labels.push((name, value.to_owned()));
            labels
        };

        let mut family = encoder.encode_descriptor(
            "gantry_ai_tokens",
            "Tokens of AI exchanges, by route, provider, model (the name the client asked for) and kind: input (prompt) or output (answer).",
            None,
            MetricType::Counter,
        )?;
        for (key, total) in &totals {
            for (kind, tokens) in [("input", total.input_tokens), ("output", total.output_tokens)] {
                ConstCounter::new(tokens).encode(family.encode_family(&with(labels(*key), "kind", kind))?)?;
            }
        }
        if totals.values().any(|total| total.cost.is_some()) {
            let mut family = encoder.encode_descriptor(
                "gantry_ai_cost",
                "Price of the tokens of AI exchanges from their targets' price tables, in the tables' currency unit, by route, provider and model.",
                None,
                MetricType::Counter,
            )?;
            for (key, total) in &totals {
                if let Some(cost) = total.cost {
                    ConstCounter::new(cost).encode(family.encode_family(&labels(*key))?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "gantry_ai_requests",
            "AI exchanges whose answer completed, by route, provider, model and cache: hit when a gateway cache answered without calling a provider, else miss.",
            None,
            MetricType::Counter,
        )?;
        for (key, total) in &totals {
            for (cache, requests) in [("hit", total.cache_hits), ("miss", total.cache_misses)] {
                ConstCounter::new(requests).encode(family.encode_family(&with(labels(*key), "cache", cache))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "gen_ai_client_token_usage",
            "OpenTelemetry's gen_ai.client.token.usage: tokens per AI exchange, by route, operation, provider, requested model and token type.",
            None,
            MetricType::Histogram,
        )?;
        for (key, counts) in series.iter() {
            for (kind, histogram) in [("input", &counts.input_usage), ("output", &counts.output_usage)] {
                let labels = vec![
                    ("route", &*key.route),
                    ("gen_ai_operation_name", key.operation),
                    ("gen_ai_provider_name", key.provider),
                    ("gen_ai_request_model", &*key.model),
                    ("gen_ai_token_type", kind),
                ];
                histogram.encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(model: &str, input: u64, output: u64, cost: Option<f64>, cache_hit: bool) -> AiUsage {
        AiUsage {
            operation: "chat",
            provider: "openai",
            request_model: Arc::from(model),
            response_model: "gpt-4o-mini-2024-07-18".to_owned(),
            input_tokens: input,
            output_tokens: output,
            cost,
            cache_hit,
            ..AiUsage::default()
        }
    }

    fn exposition(metrics: &Arc<AiMetrics>) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(metrics.clone()));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        text
    }

    fn has_line(text: &str, line: &str) -> bool {
        text.lines().any(|own| own == line)
    }

    #[test]
    fn counts_tokens_cost_and_cache_results_per_route_provider_and_model() {
        let metrics = Arc::new(AiMetrics::default());
        let chat: Arc<str> = "chat".into();
        metrics.record(&chat, &usage("gpt", 12, 30, Some(0.5), false));
        metrics.record(&chat, &usage("gpt", 3, 5, Some(0.25), true));
        metrics.record(&chat, &usage("claude", 7, 1, None, false));
        let text = exposition(&metrics);
        let gpt = "route=\"chat\",provider=\"openai\",model=\"gpt\"";
        let claude = "route=\"chat\",provider=\"openai\",model=\"claude\"";
        for line in [
            format!("gantry_ai_tokens_total{{{gpt},kind=\"input\"}} 15"),
            format!("gantry_ai_tokens_total{{{gpt},kind=\"output\"}} 35"),
            format!("gantry_ai_tokens_total{{{claude},kind=\"input\"}} 7"),
            format!("gantry_ai_cost_total{{{gpt}}} 0.75"),
            format!("gantry_ai_requests_total{{{gpt},cache=\"hit\"}} 1"),
            format!("gantry_ai_requests_total{{{gpt},cache=\"miss\"}} 1"),
            format!("gantry_ai_requests_total{{{claude},cache=\"miss\"}} 1"),
            "gen_ai_client_token_usage_bucket{le=\"4.0\",route=\"chat\",gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt\",gen_ai_token_type=\"input\"} 1".to_owned(),
            "gen_ai_client_token_usage_bucket{le=\"16.0\",route=\"chat\",gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt\",gen_ai_token_type=\"input\"} 2".to_owned(),
            "gen_ai_client_token_usage_sum{route=\"chat\",gen_ai_operation_name=\"chat\",gen_ai_provider_name=\"openai\",gen_ai_request_model=\"gpt\",gen_ai_token_type=\"output\"} 35.0".to_owned(),
        ] {
            assert!(has_line(&text, &line), "no `{line}` in\n{text}");
        }
        assert!(!text.contains(&format!("gantry_ai_cost_total{{{claude}}}")), "no price table, no cost: {text}");
        assert_eq!(metrics.tokens("chat", "openai", "gpt"), (15, 35));
    }

    #[test]
    fn shows_nothing_before_the_first_exchange_and_no_cost_without_price_tables() {
        let metrics = Arc::new(AiMetrics::default());
        assert!(!exposition(&metrics).contains("gantry_ai"));
        metrics.record(&"chat".into(), &usage("gpt", 1, 1, None, false));
        let text = exposition(&metrics);
        assert!(text.contains("gantry_ai_tokens_total"), "{text}");
        assert!(!text.contains("gantry_ai_cost"), "{text}");
    }

    #[test]
    fn counts_models_past_the_bound_as_other() {
        let metrics = Arc::new(AiMetrics::default());
        let route: Arc<str> = "chat".into();
        for index in 0..MAX_SERIES {
            metrics.record(&route, &usage(&format!("model-{index}"), 1, 1, None, false));
        }
        metrics.record(&route, &usage("one-more", 2, 3, None, false));
        metrics.record(&route, &usage("model-0", 1, 1, None, false));
        assert_eq!(metrics.tokens("chat", "openai", "one-more"), (0, 0));
        assert_eq!(metrics.tokens("chat", "openai", OTHER_MODELS), (2, 3));
        assert_eq!(metrics.tokens("chat", "openai", "model-0"), (2, 2), "known series count on");
    }
}
