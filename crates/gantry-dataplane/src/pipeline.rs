//! A route's policies in running order, and the code that runs them.
//!
//! Runs per request. Request hooks run in stage order; when one answers, only the policies
//! reached so far see the response, in reverse (as in Envoy). Lists are fixed at compile time,
//! so a policy is never called for a hook it does not implement.
//!
//! A consumer with policies of its own (or from its groups) gets its own copy of each route's
//! pipeline, made at compile time; the request switches to it after the identity stage, so
//! nothing is merged per request. Consumers whose policies are the very same (members of one
//! group with none of their own) share one copy.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use gantry_policy_api::{Exchange, Flow, LogRecord, Policy, PolicyResponse, RequestParts, ResponseParts, Stage};

use crate::trace::SpanRecorder;

/// One policy in a pipeline.
#[derive(Clone)]
pub struct PipelineEntry {
    /// Registered name, for logs and errors.
    pub name: &'static str,
    /// Stage of its request hook.
    pub stage: Stage,
    /// The policy.
    pub policy: Arc<dyn Policy>,
}

impl std::fmt::Debug for PipelineEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.stage.name())
    }
}

/// The policies of one route, in running order.
#[derive(Clone, Debug, Default)]
pub struct Pipeline {
    entries: Vec<PipelineEntry>,
    /// Positions (in `entries`) of policies with a request hook.
    request: Vec<usize>,
    /// Positions of policies with a response hook, in running (forward) order.
    response: Vec<usize>,
    /// Positions of policies with a log hook.
    log: Vec<usize>,
    /// Positions of policies that may need the request body.
    body_readers: Vec<usize>,
    /// Positions of policies that may need an upstream response's body.
    response_body_readers: Vec<usize>,
    /// Whether a policy may call upstreams from its request hook, here or in a consumer's pipeline.
    sends_subrequests: bool,
    /// This pipeline with each consumer's own policies.
    for_consumers: ForConsumers,
}

/// The policies each consumer adds to or replaces in a route's, once it is recognised: the
/// same for every route, so built once per compile. Consumers with the same policies (the
/// same built instances, as members of one group without policies of their own have) share
/// one list, and so one pipeline per route.
#[derive(Clone, Debug, Default)]
pub struct ConsumerPolicies {
    /// Index in `lists` by consumer id.
    by_consumer: Arc<HashMap<Arc<str>, usize>>,
    lists: Vec<Vec<PipelineEntry>>,
    /// Index in `lists` by the addresses of a list's policy instances.
    by_instances: HashMap<Vec<usize>, usize>,
}

impl ConsumerPolicies {
    /// Gives `consumer` the policies `entries`; an empty list gives it none.
    pub fn insert(&mut self, consumer: Arc<str>, entries: Vec<PipelineEntry>) {
        if entries.is_empty() {
            return;
        }
        // A built instance is never shared between two names, so its address alone tells
        // whether two lists are the same.
        let instances: Vec<usize> =
            entries.iter().map(|entry| Arc::as_ptr(&entry.policy).cast::<()>() as usize).collect();
        let next = self.lists.len();
        let index = *self.by_instances.entry(instances).or_insert(next);
        if index == next {
            self.lists.push(entries);
        }
        Arc::make_mut(&mut self.by_consumer).insert(consumer, index);
    }

    /// The policies of `consumer`, if it has any.
    pub fn get(&self, consumer: &str) -> Option<&[PipelineEntry]> {
        self.by_consumer.get(consumer).map(|&index| self.lists[index].as_slice())
    }

    /// How many different lists of policies there are: the pipelines made per route.
    pub fn distinct_lists(&self) -> usize {
        self.lists.len()
    }

    /// True when no consumer has policies.
    pub fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }
}

/// A route's pipelines for recognised consumers: one per distinct list of consumer policies.
#[derive(Clone, Debug, Default)]
struct ForConsumers {
    by_consumer: Arc<HashMap<Arc<str>, usize>>,
    pipelines: Vec<Arc<Pipeline>>,
}

/// How far the request hooks got.
#[derive(Debug)]
pub enum RequestOutcome {
    /// Every request hook continued: forward upstream.
    Forward,
    /// Entry at `position` answered.
    Respond {
        /// Name of the answering policy.
        policy: &'static str,
        /// Position of the answering policy; response hooks run up to it.
        position: usize,
        /// Its response.
        response: PolicyResponse,
    },
}

impl Pipeline {
    /// A pipeline of `entries`, ordered by stage; the given order is kept within a stage.
    pub fn new(mut entries: Vec<PipelineEntry>) -> Self {
        entries.sort_by_key(|entry| entry.stage);
        let positions = |wanted: fn(&PipelineEntry) -> bool| -> Vec<usize> {
            entries.iter().enumerate().filter(|(_, entry)| wanted(entry)).map(|(position, _)| position).collect()
        };
        let request = positions(|entry| entry.policy.hooks().request);
        let response = positions(|entry| entry.policy.hooks().response);
        let log = positions(|entry| entry.policy.hooks().log);
        let body_readers = positions(|entry| entry.policy.reads_request_body());
        let response_body_readers = positions(|entry| entry.policy.reads_response_body());
        let sends_subrequests = entries.iter().any(|entry| entry.policy.sends_subrequests());
        Self {
            entries,
            request,
            response,
            log,
            body_readers,
            response_body_readers,
            sends_subrequests,
            for_consumers: ForConsumers::default(),
        }
    }

    /// Adds the pipelines used once a consumer with policies of its own is recognised: each
    /// consumer policy replaces the route's policy of the same name in place, or is added at the
    /// end of its stage. Consumer policies run after the identity stage only (checked at compile).
    pub fn with_consumer_policies(mut self, consumer_policies: &ConsumerPolicies) -> Self {
        let pipelines: Vec<Arc<Pipeline>> = consumer_policies
            .lists
            .iter()
            .map(|policies| {
                let mut entries = self.entries.clone();
                for policy in policies {
                    match entries.iter_mut().find(|entry| entry.name == policy.name) {
                        Some(existing) => *existing = policy.clone(),
                        None => entries.push(policy.clone()),
                    }
                }
                Arc::new(Pipeline::new(entries))
            })
            .collect();
        self.sends_subrequests |= pipelines.iter().any(|pipeline| pipeline.sends_subrequests);
        self.for_consumers = ForConsumers { by_consumer: consumer_policies.by_consumer.clone(), pipelines };
        self
    }

    /// The pipeline that ran for `exchange`: the consumer's own once it was recognised.
    pub fn selected(&self, exchange: &Exchange) -> &Pipeline {
        if self.for_consumers.pipelines.is_empty() {
            return self;
        }
        exchange
            .consumer()
            .and_then(|consumer| self.for_consumers.by_consumer.get(&consumer.id))
            .and_then(|&index| self.for_consumers.pipelines.get(index))
            .map_or(self, |own| own)
    }

    /// The policies in running order.
    pub fn entries(&self) -> &[PipelineEntry] {
        &self.entries
    }

    /// The most bytes of this request's body that a policy wants buffered before the request
    /// hooks run, if any does. Only the route's policies are asked: a consumer's own are not
    /// known before the identity stage, and the body must be read before it.
    pub fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
        self.body_readers.iter().filter_map(|&position| self.entries[position].policy.request_body_limit(request)).max()
    }

    /// Runs request hooks until one answers. Response and log hooks must then run on
    /// [`Pipeline::selected`], which may be a consumer's own pipeline. `spans` records a span
    /// per stage that ran, when the request is traced.
    pub async fn run_request(
        &self,
        request: &mut RequestParts,
        exchange: &mut Exchange,
        mut spans: Option<&mut SpanRecorder>,
    ) -> RequestOutcome {
        let outcome = if self.for_consumers.pipelines.is_empty() {
            self.run_request_hooks(0..self.request.len(), request, exchange, spans.as_deref_mut()).await
        } else {
            // Boxed: only routes with consumer-specific pipelines take this path.
            Box::pin(self.run_request_hooks_switching(request, exchange, spans.as_deref_mut())).await
        };
        if let Some(spans) = spans {
            spans.stages_done();
        }
        outcome
    }

    async fn run_request_hooks_switching(
        &self,
        request: &mut RequestParts,
        exchange: &mut Exchange,
        mut spans: Option<&mut SpanRecorder>,
    ) -> RequestOutcome {
        let identity_done = self.request_hooks_after_identity();
        if let answered @ RequestOutcome::Respond { .. } =
            self.run_request_hooks(0..identity_done, request, exchange, spans.as_deref_mut()).await
        {
            return answered;
        }
        // Entries up to the identity stage are the same in a consumer's pipeline, so it goes
        // on from its own first later-stage entry.
        let own = self.selected(exchange);
        own.run_request_hooks(own.request_hooks_after_identity()..own.request.len(), request, exchange, spans).await
    }

    /// Index in `request` of the first hook of a stage after identity.
    fn request_hooks_after_identity(&self) -> usize {
        self.request.iter().position(|&at| self.entries[at].stage > Stage::Identity).unwrap_or(self.request.len())
    }

    async fn run_request_hooks(
        &self,
        hooks: std::ops::Range<usize>,
        request: &mut RequestParts,
        exchange: &mut Exchange,
        mut spans: Option<&mut SpanRecorder>,
    ) -> RequestOutcome {
        for &position in &self.request[hooks] {
            let entry = &self.entries[position];
            if let Some(spans) = spans.as_deref_mut() {
                spans.policy(entry.stage, false, entry.name);
            }
            if let Flow::Respond(response) = entry.policy.on_request(request, exchange).resolve().await {
                tracing::debug!(
                    policy = entry.name,
                    status = response.status().as_u16(),
                    "policy answered the request"
                );
                return RequestOutcome::Respond { policy: entry.name, position, response };
            }
        }
        RequestOutcome::Forward
    }

    /// The most bytes of an upstream response's body that a policy wants buffered before the
    /// response hooks run, if any does.
    pub fn response_body_limit(&self, response: &ResponseParts, exchange: &Exchange) -> Option<u64> {
        self.response_body_readers
            .iter()
            .filter_map(|&position| self.entries[position].policy.response_body_limit(response, exchange))
            .max()
    }

    /// Shows a buffered upstream response body to the policies that read bodies, in response
    /// order, until one answers instead: that policy's name and answer.
    pub fn run_response_body(
        &self,
        response: &ResponseParts,
        body: &Bytes,
        exchange: &mut Exchange,
    ) -> Option<(&'static str, PolicyResponse)> {
        self.response_body_readers.iter().rev().find_map(|&position| {
            let entry = &self.entries[position];
            entry.policy.on_response_body(response, body, exchange).map(|answer| (entry.name, answer))
        })
    }

    /// Runs response hooks in reverse, for the policies up to `reached` (all when `None`);
    /// `spans` records a span per stage that ran, when the request is traced.
    pub fn run_response(
        &self,
        response: &mut ResponseParts,
        exchange: &mut Exchange,
        reached: Option<usize>,
        mut spans: Option<&mut SpanRecorder>,
    ) {
        for &position in self.response.iter().rev() {
            if reached.is_some_and(|last| position > last) {
                continue;
            }
            let entry = &self.entries[position];
            if let Some(spans) = spans.as_deref_mut() {
                spans.policy(entry.stage, true, entry.name);
            }
            entry.policy.on_response(response, exchange);
        }
        if let Some(spans) = spans {
            spans.stages_done();
        }
    }

    /// Runs log hooks.
    pub fn run_log(&self, record: &LogRecord<'_>) {
        for &position in &self.log {
            self.entries[position].policy.on_log(record);
        }
    }

    /// True when a request hook may send subrequests, so the exchange needs the handle.
    pub fn sends_subrequests(&self) -> bool {
        self.sends_subrequests
    }

    /// True when no policy has a request hook.
    pub fn has_request_hooks(&self) -> bool {
        !self.request.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use gantry_policy_api::testing::{exchange_from, request_parts};
    use gantry_policy_api::{Hook, Hooks};
    use http::StatusCode;

    use super::*;

    /// Records the order hooks are called in; answers with 403 when `deny`.
    struct Recorder {
        name: &'static str,
        deny: bool,
        calls: Arc<Mutex<Vec<String>>>,
    }

    impl Policy for Recorder {
        fn hooks(&self) -> Hooks {
            Hooks { request: true, response: true, log: false }
        }

        fn on_request<'a>(&'a self, _: &'a mut RequestParts, _: &'a mut Exchange) -> Hook<'a> {
            self.calls.lock().expect("lock").push(format!("request {}", self.name));
            if self.deny {
                let mut response = PolicyResponse::new(Default::default());
                *response.status_mut() = StatusCode::FORBIDDEN;
                return response.into();
            }
            Flow::Continue.into()
        }

        fn on_response(&self, _: &mut ResponseParts, _: &mut Exchange) {
            self.calls.lock().expect("lock").push(format!("response {}", self.name));
        }
    }

    fn entry(name: &'static str, stage: Stage, deny: bool, calls: &Arc<Mutex<Vec<String>>>) -> PipelineEntry {
        PipelineEntry { name, stage, policy: Arc::new(Recorder { name, deny, calls: calls.clone() }) }
    }

    fn run(pipeline: &Pipeline) -> Option<usize> {
        let mut request = request_parts(http::Request::new(()));
        let mut exchange = exchange_from("127.0.0.1:1");
        let outcome = futures_util::FutureExt::now_or_never(pipeline.run_request(&mut request, &mut exchange, None))
            .expect("recorders never wait");
        let reached = match outcome {
            RequestOutcome::Forward => None,
            RequestOutcome::Respond { position, .. } => Some(position),
        };
        let mut response = http::Response::new(()).into_parts().0;
        pipeline.run_response(&mut response, &mut exchange, reached, None);
        reached
    }

    #[test]
    fn runs_requests_in_stage_order_and_responses_in_reverse() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let pipeline = Pipeline::new(vec![
            entry("transform", Stage::Transform, false, &calls),
            entry("ingress", Stage::Ingress, false, &calls),
            entry("access", Stage::Access, false, &calls),
        ]);
        assert_eq!(run(&pipeline), None);
        let calls = calls.lock().expect("lock").clone();
        assert_eq!(
            calls,
            [
                "request ingress",
                "request access",
                "request transform",
                "response transform",
                "response access",
                "response ingress"
            ]
        );
    }

    #[test]
    fn an_answer_skips_later_policies_and_only_earlier_ones_see_the_response() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let pipeline = Pipeline::new(vec![
            entry("ingress", Stage::Ingress, false, &calls),
            entry("access", Stage::Access, true, &calls),
            entry("transform", Stage::Transform, false, &calls),
        ]);
        assert_eq!(run(&pipeline), Some(1));
        let calls = calls.lock().expect("lock").clone();
        assert_eq!(calls, ["request ingress", "request access", "response access", "response ingress"]);
    }

    #[test]
    fn records_one_span_per_stage_that_ran_with_its_policies() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let pipeline = Pipeline::new(vec![
            entry("first", Stage::Ingress, false, &calls),
            entry("second", Stage::Ingress, false, &calls),
            entry("denier", Stage::Access, true, &calls),
            entry("never", Stage::Transform, false, &calls),
        ]);
        let mut spans = crate::trace::record::tests_support::recorder();
        let mut request = request_parts(http::Request::new(()));
        let mut exchange = exchange_from("127.0.0.1:1");
        let outcome =
            futures_util::FutureExt::now_or_never(pipeline.run_request(&mut request, &mut exchange, Some(&mut spans)))
                .expect("recorders never wait");
        let RequestOutcome::Respond { position, .. } = outcome else { panic!("the access policy answers") };
        let mut response = http::Response::new(()).into_parts().0;
        pipeline.run_response(&mut response, &mut exchange, Some(position), Some(&mut spans));

        let stages: Vec<(Stage, bool, Vec<&str>)> = spans
            .stages
            .iter()
            .map(|span| (span.stage, span.response, spans.policies[span.policies.0..span.policies.1].to_vec()))
            .collect();
        assert_eq!(
            stages,
            [
                (Stage::Ingress, false, vec!["first", "second"]),
                (Stage::Access, false, vec!["denier"]),
                (Stage::Access, true, vec!["denier"]),
                (Stage::Ingress, true, vec!["second", "first"]),
            ]
        );
        assert!(spans.stages.windows(2).all(|pair| pair[0].end <= pair[1].start), "stages follow each other");
    }

    /// Wants `limit` bytes of POST bodies.
    struct BodyReader(u64);

    impl Policy for BodyReader {
        fn hooks(&self) -> Hooks {
            Hooks::REQUEST
        }

        fn reads_request_body(&self) -> bool {
            true
        }

        fn request_body_limit(&self, request: &RequestParts) -> Option<u64> {
            (request.method == http::Method::POST).then_some(self.0)
        }
    }

    #[test]
    fn asks_only_body_readers_and_takes_the_largest_limit() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let reader =
            |limit| PipelineEntry { name: "reader", stage: Stage::Identity, policy: Arc::new(BodyReader(limit)) };
        let pipeline = Pipeline::new(vec![reader(10), entry("other", Stage::Access, false, &calls), reader(64)]);
        let post = request_parts(http::Request::post("/").body(()).expect("request"));
        let get = request_parts(http::Request::get("/").body(()).expect("request"));
        assert_eq!(pipeline.request_body_limit(&post), Some(64));
        assert_eq!(pipeline.request_body_limit(&get), None);
        let without = Pipeline::new(vec![entry("other", Stage::Access, false, &calls)]);
        assert_eq!(without.request_body_limit(&post), None);
    }

    /// Reads response bodies of `status` and answers 502 when one is `bad`.
    struct ResponseChecker {
        name: &'static str,
        status: StatusCode,
        seen: Arc<Mutex<Vec<&'static str>>>,
    }

    impl Policy for ResponseChecker {
        fn hooks(&self) -> Hooks {
            Hooks::default()
        }

        fn reads_response_body(&self) -> bool {
            true
        }

        fn response_body_limit(&self, response: &ResponseParts, _: &Exchange) -> Option<u64> {
            (response.status == self.status).then_some(100)
        }

        fn on_response_body(&self, _: &ResponseParts, body: &Bytes, _: &mut Exchange) -> Option<PolicyResponse> {
            self.seen.lock().expect("lock").push(self.name);
            (body.as_ref() == b"bad").then(|| {
                let mut answer = PolicyResponse::new(Bytes::new());
                *answer.status_mut() = StatusCode::BAD_GATEWAY;
                answer
            })
        }
    }

    #[test]
    fn shows_response_bodies_to_readers_in_response_order_until_one_answers() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let checker = |name, stage, status| PipelineEntry {
            name,
            stage,
            policy: Arc::new(ResponseChecker { name, status, seen: seen.clone() }),
        };
        let pipeline = Pipeline::new(vec![
            checker("early", Stage::Access, StatusCode::OK),
            checker("late", Stage::Validate, StatusCode::OK),
        ]);
        let mut exchange = exchange_from("127.0.0.1:1");
        let ok = http::Response::new(()).into_parts().0;
        let created = http::Response::builder().status(201).body(()).expect("response").into_parts().0;
        assert_eq!(pipeline.response_body_limit(&ok, &exchange), Some(100));
        assert_eq!(pipeline.response_body_limit(&created, &exchange), None);
        assert!(pipeline.run_response_body(&ok, &Bytes::from_static(b"good"), &mut exchange).is_none());
        let (policy, answer) =
            pipeline.run_response_body(&ok, &Bytes::from_static(b"bad"), &mut exchange).expect("an answer");
        assert_eq!((policy, answer.status()), ("late", StatusCode::BAD_GATEWAY));
        assert_eq!(*seen.lock().expect("lock"), ["late", "early", "late"]);
    }

    fn as_consumer(id: &str) -> Exchange {
        let mut exchange = exchange_from("127.0.0.1:1");
        let consumer = Arc::new(gantry_policy_api::Consumer::named(id));
        exchange.authenticate(gantry_policy_api::Identity::credential(consumer, format!("{id}:key").into(), "key"));
        exchange
    }

    fn names(pipeline: &Pipeline) -> Vec<String> {
        pipeline.entries().iter().map(|entry| format!("{}@{}", entry.name, entry.stage.name())).collect()
    }

    #[test]
    fn switches_to_a_consumers_pipeline_where_its_policies_replace_the_routes() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let route_limit = entry("limit", Stage::Traffic, false, &calls);
        let group_limit = entry("limit", Stage::Traffic, true, &calls);
        let group_header = entry("header", Stage::Transform, false, &calls);
        let mut consumers = ConsumerPolicies::default();
        consumers.insert("gold-1".into(), vec![group_limit.clone(), group_header.clone()]);
        consumers.insert("gold-2".into(), vec![group_limit.clone(), group_header.clone()]);
        consumers.insert("loner".into(), vec![entry("limit", Stage::Traffic, false, &calls)]);
        consumers.insert("nobody".into(), Vec::new());
        assert_eq!(consumers.distinct_lists(), 2, "the two group members share one list");
        assert!(consumers.get("nobody").is_none());

        let pipeline = Pipeline::new(vec![entry("auth", Stage::Identity, false, &calls), route_limit.clone()])
            .with_consumer_policies(&consumers);
        let gold_1 = pipeline.selected(&as_consumer("gold-1"));
        let gold_2 = pipeline.selected(&as_consumer("gold-2"));
        assert!(std::ptr::eq(gold_1, gold_2), "one pipeline per list, not per consumer");
        assert_eq!(names(gold_1), ["auth@identity", "limit@traffic", "header@transform"]);
        assert!(Arc::ptr_eq(&gold_1.entries()[1].policy, &group_limit.policy), "replaced in place");
        assert!(std::ptr::eq(pipeline.selected(&as_consumer("stranger")), &pipeline));
        assert!(std::ptr::eq(pipeline.selected(&exchange_from("127.0.0.1:1")), &pipeline));
        assert!(!std::ptr::eq(pipeline.selected(&as_consumer("loner")), gold_1));

        let answered_by = |mut exchange: Exchange| {
            let mut request = request_parts(http::Request::new(()));
            let outcome =
                futures_util::FutureExt::now_or_never(pipeline.run_request(&mut request, &mut exchange, None))
                    .expect("recorders never wait");
            match outcome {
                RequestOutcome::Forward => None,
                RequestOutcome::Respond { policy, .. } => Some(policy),
            }
        };
        assert_eq!(answered_by(as_consumer("gold-2")), Some("limit"), "the group's refusing limit ran");
        assert_eq!(answered_by(as_consumer("loner")), None);
        assert_eq!(answered_by(as_consumer("stranger")), None);
    }

    struct Fetcher;

    impl Policy for Fetcher {
        fn hooks(&self) -> Hooks {
            Hooks::REQUEST
        }

        fn sends_subrequests(&self) -> bool {
            true
        }
    }

    #[test]
    fn needs_the_subrequest_handle_only_where_a_policy_sends_subrequests() {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let fetcher = PipelineEntry { name: "aggregate", stage: Stage::Forward, policy: Arc::new(Fetcher) };
        let plain = || Pipeline::new(vec![entry("auth", Stage::Identity, false, &calls)]);
        assert!(!plain().sends_subrequests());
        assert!(Pipeline::new(vec![entry("auth", Stage::Identity, false, &calls), fetcher.clone()]).sends_subrequests());

        let mut consumers = ConsumerPolicies::default();
        consumers.insert("gold".into(), vec![fetcher]);
        assert!(
            plain().with_consumer_policies(&consumers).sends_subrequests(),
            "a consumer's own pipeline may need it"
        );
        let mut others = ConsumerPolicies::default();
        others.insert("silver".into(), vec![entry("limit", Stage::Traffic, false, &calls)]);
        assert!(!plain().with_consumer_policies(&others).sends_subrequests());
    }
}
