//! One round's traces: a walk down the fleet's call graph from an entry
//! operation, with the spans and logs each service emits on the way.

use super::*;

pub(super) struct TraceGen<'a> {
    pub(super) fleet: &'a Fleet,
    pub(super) rng: &'a mut Rng,
    pub(super) spans: Vec<Vec<Span>>,
    pub(super) logs: Vec<Vec<LogRecord>>,
    pub(super) trace_ids: Vec<[u8; 16]>,
    pub(super) span_ids: Vec<[u8; 8]>,
    pub(super) times: Vec<u64>,
    pub(super) count: usize,
    /// Spans this trace may still add.
    pub(super) budget: usize,
}

const MS: f64 = 1_000_000.0;

impl TraceGen<'_> {
    fn span_id(&mut self) -> [u8; 8] {
        let id: [u8; 8] = self.rng.id();
        self.span_ids.push(id);
        id
    }

    #[allow(clippy::too_many_arguments)]
    fn push_span(
        &mut self,
        service: usize,
        trace_id: &[u8; 16],
        span_id: [u8; 8],
        parent: Option<[u8; 8]>,
        name: String,
        kind: SpanKind,
        (start, end): (u64, u64),
        failed: bool,
        attributes: Vec<KeyValue>,
    ) {
        self.times.push(start);
        self.times.push(end);
        self.count += 1;
        self.budget = self.budget.saturating_sub(1);
        let error = failed.then(|| Status {
            code: StatusCode::Error as i32,
            message: "upstream failure".into(),
        });
        if failed || self.rng.unit() < self.fleet.spec.log_ratio {
            let (severity, text, body) = if failed {
                (
                    17,
                    "ERROR",
                    format!(
                        "{name} failed after {} ms: status 500",
                        (end - start) / 1_000_000
                    ),
                )
            } else {
                (
                    9,
                    "INFO",
                    format!("{name} completed in {} ms", (end - start) / 1_000_000),
                )
            };
            self.logs[service].push(LogRecord {
                time_unix_nano: end,
                observed_time_unix_nano: end,
                severity_number: severity,
                severity_text: text.into(),
                body: Some(AnyValue {
                    value: Some(any_value::Value::StringValue(body)),
                }),
                trace_id: trace_id.to_vec(),
                span_id: span_id.to_vec(),
                ..Default::default()
            });
        }
        self.spans[service].push(Span {
            trace_id: trace_id.to_vec(),
            span_id: span_id.to_vec(),
            parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
            name,
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes,
            status: error.or(Some(Status::default())),
            ..Default::default()
        });
    }

    /// A SERVER span of `service` (and everything it calls); returns (end, failed).
    pub(super) fn server(
        &mut self,
        service: usize,
        op: usize,
        trace_id: &[u8; 16],
        parent: Option<[u8; 8]>,
        start: u64,
        consumer: bool,
    ) -> (u64, bool) {
        let fleet = self.fleet;
        let svc = &fleet.services[service];
        let operation = &svc.operations[op];
        let span_id = self.span_id();
        let own = self
            .rng
            .log_normal(operation.median_ms, fleet.spec.latency_sigma)
            .max(0.05)
            * MS;
        let mut cursor = start + (own * 0.3) as u64;
        let mut failed = self.rng.unit() < fleet.spec.error_ratio;
        // Database calls.
        if let Some((system, port, db)) = &svc.database
            && self.budget > 0
            && self.rng.unit() < 0.8
        {
            let statement = ["SELECT", "INSERT", "UPDATE"][self.rng.below(3)];
            let d = self.rng.log_normal(1.5, 0.5) * MS;
            let end = cursor + d as u64;
            let id = self.span_id();
            let table = RESOURCES[op % RESOURCES.len()];
            self.push_span(
                service,
                trace_id,
                id,
                Some(span_id),
                format!("{statement} {db}.{table}"),
                SpanKind::Client,
                (cursor, end),
                false,
                vec![
                    kv("db.system.name", *system),
                    kv("db.namespace", db.as_str()),
                    kv("db.operation.name", statement),
                    kv("db.collection.name", table),
                    kv("server.address", format!("{db}.{}.svc", svc.name)),
                    kv("server.port", *port as i64),
                ],
            );
            cursor = end + 50_000;
        }
        // Downstream calls.
        let children = svc.children.clone();
        for child in children {
            if self.budget < 2 || self.rng.unit() >= 0.6 {
                continue;
            }
            let child_op = self.rng.below(fleet.services[child].operations.len());
            let client_id = self.span_id();
            let net = (self.rng.log_normal(0.4, 0.3) * MS) as u64;
            let (child_end, child_failed) = self.server(
                child,
                child_op,
                trace_id,
                Some(client_id),
                cursor + net / 2,
                false,
            );
            let end = child_end + net / 2;
            let target = &fleet.services[child];
            let route = &target.operations[child_op];
            self.push_span(
                service,
                trace_id,
                client_id,
                Some(span_id),
                route.method.to_string(),
                SpanKind::Client,
                (cursor, end),
                child_failed,
                vec![
                    kv("http.request.method", route.method),
                    kv("server.address", target.name.as_str()),
                    kv("server.port", 8080i64),
                    kv(
                        "url.full",
                        format!("http://{}:8080{}", target.name, route.route),
                    ),
                    kv(
                        "http.response.status_code",
                        if child_failed { 500i64 } else { 200 },
                    ),
                ],
            );
            failed |= child_failed;
            cursor = end + 20_000;
        }
        // A message for the consumer service.
        if let Some((topic, consumer_service)) = svc.queue.clone()
            && self.budget >= 2
            && self.rng.unit() < 0.5
        {
            let producer_id = self.span_id();
            let end = cursor + (self.rng.log_normal(0.3, 0.3) * MS) as u64;
            self.push_span(
                service,
                trace_id,
                producer_id,
                Some(span_id),
                format!("publish {topic}"),
                SpanKind::Producer,
                (cursor, end),
                false,
                vec![
                    kv("messaging.system", "kafka"),
                    kv("messaging.operation.type", "publish"),
                    kv("messaging.destination.name", topic.as_str()),
                ],
            );
            let lag = (self.rng.log_normal(5.0, 0.8) * MS) as u64;
            let consumer_op = self
                .rng
                .below(fleet.services[consumer_service].operations.len());
            self.server(
                consumer_service,
                consumer_op,
                trace_id,
                Some(producer_id),
                end + lag,
                true,
            );
            cursor = end;
        }
        let end = cursor + (own * 0.7) as u64;
        let name = if consumer {
            format!("process {}", operation.route)
        } else {
            operation.name.clone()
        };
        let mut attributes = vec![
            kv("http.request.method", operation.method),
            kv("http.route", operation.route.as_str()),
            kv("url.path", operation.route.replace("{id}", "4711")),
            kv("url.scheme", "http"),
            kv("network.protocol.version", "1.1"),
            kv(
                "http.response.status_code",
                if failed { 500i64 } else { 200 },
            ),
        ];
        if parent.is_none() {
            attributes.push(kv("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64)"));
            attributes.push(kv("client.address", "10.1.2.3"));
        }
        self.push_span(
            service,
            trace_id,
            span_id,
            parent,
            name,
            if consumer {
                SpanKind::Consumer
            } else {
                SpanKind::Server
            },
            (start, end),
            failed,
            attributes,
        );
        (end, failed)
    }
}
