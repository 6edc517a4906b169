//! What an AI exchange used, shared between the policy that calls the provider and the ones
//! that count it.
//!
//! The terminal AI policy (`ai_proxy`) puts an [`AiExchange`] in the exchange's extensions
//! when it starts, or finds one an earlier policy put there. Earlier policies
//! (`ai_rate_limit`, budgets) register listeners on it before the provider is called; the
//! data plane reads the finished [`AiUsage`] for metrics, spans and the access log. A streamed
//! answer's usage is known only when its stream ends, after the response head has gone out,
//! so the usage is set once, at that moment, and listeners run then.

use std::fmt;
use std::sync::{Arc, Mutex};

/// The token use and cost of one AI exchange.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AiUsage {
    /// `chat`, `text_completion` or `embeddings` (OpenTelemetry's `gen_ai.operation.name`).
    pub operation: &'static str,
    /// The provider that answered, as OpenTelemetry names it (`gen_ai.system`: `openai`,
    /// `anthropic`, `gcp.gemini`, `aws.bedrock`, ...); empty when none answered.
    pub provider: &'static str,
    /// The model name the client asked for (an alias of the gateway's).
    pub request_model: Arc<str>,
    /// The provider's model that answered; empty when none answered.
    pub response_model: String,
    /// Tokens of the prompt.
    pub input_tokens: u64,
    /// Tokens of the answer.
    pub output_tokens: u64,
    /// True when the counts were estimated with a tokenizer because the provider gave none.
    pub estimated: bool,
    /// Price of the tokens, from the target's price table, in its currency unit; `None`
    /// without a price table.
    pub cost: Option<f64>,
    /// True when the answer came from a gateway cache and no provider was called.
    pub cache_hit: bool,
}

impl AiUsage {
    /// Input and output tokens together.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens.saturating_add(self.output_tokens)
    }
}

type UsageListener = Box<dyn FnOnce(&AiUsage) + Send>;

#[derive(Default)]
struct State {
    /// The model the client asked for, known once the request body has been read.
    request_model: Option<Arc<str>>,
    usage: Option<AiUsage>,
    listeners: Vec<UsageListener>,
}

/// The shared record of one AI exchange: cloned into the exchange's extensions, the answer's
/// stream and the data plane's logging, all of them seeing the same state.
#[derive(Clone, Default)]
pub struct AiExchange {
    state: Arc<Mutex<State>>,
}

impl fmt::Debug for AiExchange {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_struct("AiExchange").field("usage", &self.usage()).finish_non_exhaustive()
    }
}

impl AiExchange {
    /// The exchange's AI record, put there now if no policy has yet.
    pub fn of(extensions: &mut http::Extensions) -> AiExchange {
        extensions.get_or_insert_default::<AiExchange>().clone()
    }

    /// Calls `listener` with the usage once it is known (at once if it already is). Called at
    /// most once; never called if the exchange ends before any provider or cache answered.
    pub fn on_usage(&self, listener: impl FnOnce(&AiUsage) + Send + 'static) {
        let mut state = self.lock();
        match &state.usage {
            Some(usage) => {
                let usage = usage.clone();
                drop(state);
                listener(&usage);
            }
            None => state.listeners.push(Box::new(listener)),
        }
    }

    /// Records the finished usage and runs the listeners; a second call is ignored, so the
    /// first report (the stream's end, or its abandonment) is the one that counts.
    pub fn finish(&self, usage: AiUsage) {
        let listeners = {
            let mut state = self.lock();
            if state.usage.is_some() {
                return;
            }
            state.usage = Some(usage.clone());
            std::mem::take(&mut state.listeners)
        };
        for listener in listeners {
            listener(&usage);
        }
    }

    /// The usage, once the answer is complete.
    pub fn usage(&self) -> Option<AiUsage> {
        self.lock().usage.clone()
    }

    /// True once the usage is known.
    pub fn is_finished(&self) -> bool {
        self.lock().usage.is_some()
    }

    /// Notes the model the client asked for, for the policies that run before the answer.
    pub fn set_request_model(&self, model: &str) {
        self.lock().request_model = Some(Arc::from(model));
    }

    /// The model the client asked for, once a policy has read the request body.
    pub fn request_model(&self) -> Option<Arc<str>> {
        self.lock().request_model.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A listener that panicked leaves the state consistent: it only ever runs outside the lock.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    fn usage(input: u64, output: u64) -> AiUsage {
        AiUsage {
            operation: "chat",
            provider: "openai",
            input_tokens: input,
            output_tokens: output,
            ..AiUsage::default()
        }
    }

    #[test]
    fn listeners_run_once_with_the_first_usage() {
        let counted = Arc::new(AtomicU64::new(0));
        let mut extensions = http::Extensions::new();
        let exchange = AiExchange::of(&mut extensions);
        let seen = counted.clone();
        exchange.on_usage(move |usage| {
            seen.fetch_add(usage.total_tokens(), Ordering::Relaxed);
        });
        assert_eq!(counted.load(Ordering::Relaxed), 0);
        AiExchange::of(&mut extensions).finish(usage(3, 4));
        exchange.finish(usage(100, 100));
        assert_eq!(counted.load(Ordering::Relaxed), 7);
        assert_eq!(exchange.usage().map(|usage| usage.total_tokens()), Some(7));
    }

    #[test]
    fn a_late_listener_runs_at_once() {
        let exchange = AiExchange::default();
        exchange.finish(usage(1, 2));
        let counted = Arc::new(AtomicU64::new(0));
        let seen = counted.clone();
        exchange.on_usage(move |usage| {
            seen.store(usage.output_tokens, Ordering::Relaxed);
        });
        assert_eq!(counted.load(Ordering::Relaxed), 2);
    }
}
