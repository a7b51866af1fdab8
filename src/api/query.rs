//! The gRPC query API (`proto/homeostat/v1/query.proto`): incidents, their
//! ranked root causes, the service graph and anomalies, read from what the
//! incident and detection stages publish. Served on the `api.addr` listener
//! beside the HTTP routes, with health and reflection.

use std::collections::HashMap;
use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use crate::detect::AnomalyLog;
use crate::incident::{Incident, IncidentLog, IncidentState, node};

/// The generated messages and services of `homeostat.v1`.
#[allow(unreachable_pub, clippy::all)]
pub mod pb {
    tonic::include_proto!("homeostat.v1");
}

/// The encoded descriptors of `homeostat.v1` (for reflection).
pub const DESCRIPTORS: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/homeostat_descriptor.bin"));

/// The `homeostat.v1.Query` service name.
pub const SERVICE: &str = "homeostat.v1.Query";

/// The query service over the published read models.
#[derive(Clone)]
pub struct QueryService {
    pub incidents: IncidentLog,
    pub anomalies: AnomalyLog,
    /// Ends the watch streams when the engine stops (else an open watch would
    /// hold the graceful shutdown forever).
    pub stop: tokio_util::sync::CancellationToken,
    /// What remediation does about each incident (empty when it is off).
    pub remediations: crate::remediate::log::RemediationLog,
}

/// The state the API tells of each incident remediation touched.
fn remediation_states(log: &crate::remediate::log::RemediationLog) -> HashMap<u64, String> {
    log.remediations()
        .into_iter()
        .map(|r| (r.incident, r.state))
        .collect()
}

/// An open incident being remediated is `mitigating`; one whose remediation
/// was escalated is `escalated`; otherwise its lifecycle state.
fn told(mut view: pb::Incident, remediations: &HashMap<u64, String>) -> pb::Incident {
    if view.state == "open" {
        match remediations.get(&view.id).map(String::as_str) {
            Some("mitigating" | "waiting_approval" | "verifying") => {
                view.state = "mitigating".into()
            }
            Some("escalated") => view.state = "escalated".into(),
            _ => {}
        }
    }
    view
}

/// A request's `limit`: 0 means no limit.
fn limit(requested: u32) -> usize {
    if requested == 0 {
        usize::MAX
    } else {
        requested as usize
    }
}

fn state_name(state: IncidentState) -> &'static str {
    match state {
        IncidentState::Open => "open",
        IncidentState::Resolved => "resolved",
    }
}

fn anomaly(a: &crate::detect::Anomaly, ended: Option<i64>) -> pb::Anomaly {
    pb::Anomaly {
        service: a.key.service.clone(),
        signal: a.key.signal.clone(),
        name: a.key.name.clone(),
        attributes: a.key.attributes.clone(),
        class: a.class.as_str().to_string(),
        pattern: a.pattern.clone(),
        onset_unix_ms: a.onset_ms,
        ended_unix_ms: ended.or(a.ended_ms).unwrap_or(0),
        observed: a.observed,
        expected: a.expected,
        score: a.score,
        detail: a.detail.clone(),
    }
}

/// The two ends of an edge from their node identities: caller and callee
/// names, then the caller's namespace and environment, then the callee's.
fn ends(caller: &str, callee: &str) -> [String; 6] {
    let [cns, caller, cenv] = node::parts(caller);
    let [ens, callee, eenv] = node::parts(callee);
    [caller, callee, cns, cenv, ens, eenv].map(str::to_string)
}

fn root_causes(incident: &Incident) -> Vec<pb::RootCause> {
    incident
        .root_causes
        .iter()
        .map(|r| pb::RootCause {
            service: r.service.clone(),
            namespace: r.namespace.clone(),
            environment: r.environment.clone(),
            class: r.class.as_str().to_string(),
            score: r.score,
            evidence: r
                .evidence
                .iter()
                .map(|e| pb::Evidence {
                    signal: e.signal.as_str().to_string(),
                    value: e.value,
                    spoke: e.spoke,
                    detail: e.detail.clone(),
                })
                .collect(),
        })
        .collect()
}

/// An incident as the API answers it, with or without its anomalies.
pub fn incident(i: &Incident, with_anomalies: bool) -> pb::Incident {
    pb::Incident {
        id: i.id,
        state: state_name(i.state).to_string(),
        opened_unix_ms: i.opened_ms,
        resolved_unix_ms: i.resolved_ms.unwrap_or(0),
        services: i.services().into_iter().map(str::to_string).collect(),
        root_causes: root_causes(i),
        entry_points: i.entry_points.clone(),
        anomalies: if with_anomalies {
            i.members().map(|(a, ended)| anomaly(a, ended)).collect()
        } else {
            Vec::new()
        },
        anomaly_count: i.anomalies().count().min(u32::MAX as usize) as u32,
        reopened: i.reopened,
    }
}

impl QueryService {
    fn find(&self, id: u64) -> Result<Incident, Status> {
        self.incidents
            .snapshot()
            .into_iter()
            .find(|i| i.id == id)
            .ok_or_else(|| Status::not_found(format!("no incident {id} is held")))
    }
}

type IncidentStream = Pin<Box<dyn Stream<Item = Result<pb::Incident, Status>> + Send>>;

#[tonic::async_trait]
impl pb::query_server::Query for QueryService {
    async fn list_incidents(
        &self,
        request: Request<pb::ListIncidentsRequest>,
    ) -> Result<Response<pb::ListIncidentsResponse>, Status> {
        let r = request.into_inner();
        if !matches!(r.state.as_str(), "" | "open" | "resolved") {
            return Err(Status::invalid_argument(format!(
                "state `{}` is not one of open, resolved",
                r.state
            )));
        }
        let limit = limit(r.limit);
        let states = remediation_states(&self.remediations);
        let incidents = self
            .incidents
            .snapshot()
            .iter()
            .rev()
            .filter(|i| r.state.is_empty() || state_name(i.state) == r.state)
            .take(limit)
            .map(|i| told(incident(i, false), &states))
            .collect();
        Ok(Response::new(pb::ListIncidentsResponse { incidents }))
    }

    async fn get_incident(
        &self,
        request: Request<pb::GetIncidentRequest>,
    ) -> Result<Response<pb::Incident>, Status> {
        let found = self.find(request.into_inner().id)?;
        let states = remediation_states(&self.remediations);
        Ok(Response::new(told(incident(&found, true), &states)))
    }

    type WatchIncidentsStream = IncidentStream;

    async fn watch_incidents(
        &self,
        request: Request<pb::WatchIncidentsRequest>,
    ) -> Result<Response<IncidentStream>, Status> {
        let open_only = request.into_inner().open_only;
        let log = self.incidents.clone();
        let remediations = self.remediations.clone();
        let stop = self.stop.clone();
        let mut revisions = log.subscribe();
        let stream = async_stream(move |tx| async move {
            let mut sent: HashMap<u64, pb::Incident> = HashMap::new();
            let mut first = true;
            loop {
                let states = remediation_states(&remediations);
                for i in log.snapshot() {
                    if first && open_only && i.state != IncidentState::Open {
                        continue;
                    }
                    let now = told(incident(&i, true), &states);
                    if sent.get(&i.id) != Some(&now) {
                        sent.insert(i.id, now.clone());
                        if tx.send(Ok(now)).await.is_err() {
                            return;
                        }
                    }
                }
                first = false;
                tokio::select! {
                    changed = revisions.changed() => if changed.is_err() { return },
                    () = stop.cancelled() => return,
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn get_root_causes(
        &self,
        request: Request<pb::GetIncidentRequest>,
    ) -> Result<Response<pb::RootCauses>, Status> {
        let found = self.find(request.into_inner().id)?;
        Ok(Response::new(pb::RootCauses {
            incident_id: found.id,
            root_causes: root_causes(&found),
        }))
    }

    async fn get_service_graph(
        &self,
        _request: Request<pb::GetServiceGraphRequest>,
    ) -> Result<Response<pb::ServiceGraph>, Status> {
        let edges = self
            .incidents
            .edges()
            .into_iter()
            .map(|e| {
                let [
                    caller,
                    callee,
                    caller_namespace,
                    caller_environment,
                    callee_namespace,
                    callee_environment,
                ] = ends(&e.caller, &e.callee);
                pb::Edge {
                    caller,
                    callee,
                    caller_namespace,
                    caller_environment,
                    callee_namespace,
                    callee_environment,
                    last_seen_unix_ms: e.last_seen_ms,
                    first_seen_unix_ms: e.first_seen_ms,
                    callee_kind: e.callee_kind,
                    exemplar_trace_id: e.exemplar_trace_id,
                }
            })
            .collect();
        let changes = self
            .incidents
            .changes()
            .into_iter()
            .map(|c| {
                let [
                    caller,
                    callee,
                    caller_namespace,
                    caller_environment,
                    callee_namespace,
                    callee_environment,
                ] = ends(&c.caller, &c.callee);
                pb::TopologyChange {
                    kind: if c.new { "new" } else { "gone" }.to_string(),
                    caller,
                    callee,
                    caller_namespace,
                    caller_environment,
                    callee_namespace,
                    callee_environment,
                    at_unix_ms: c.at_ms,
                }
            })
            .collect();
        Ok(Response::new(pb::ServiceGraph { edges, changes }))
    }

    async fn list_anomalies(
        &self,
        request: Request<pb::ListAnomaliesRequest>,
    ) -> Result<Response<pb::ListAnomaliesResponse>, Status> {
        let r = request.into_inner();
        if r.to_unix_ms != 0 && r.from_unix_ms > r.to_unix_ms {
            return Err(Status::invalid_argument("from_unix_ms is after to_unix_ms"));
        }
        let limit = limit(r.limit);
        let anomalies = self
            .anomalies
            .snapshot()
            .iter()
            .filter(|a| r.service.is_empty() || a.key.service == r.service)
            .filter(|a| a.onset_ms >= r.from_unix_ms)
            .filter(|a| r.to_unix_ms == 0 || a.onset_ms < r.to_unix_ms)
            .take(limit)
            .map(|a| anomaly(a, None))
            .collect();
        Ok(Response::new(pb::ListAnomaliesResponse { anomalies }))
    }
}

/// A stream fed by a task through a bounded channel (the task stops when the
/// client goes away).
fn async_stream<F, Fut>(body: F) -> IncidentStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<pb::Incident, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(body(tx));
    Box::pin(futures::stream::poll_fn(move |cx| rx.poll_recv(cx)))
}

/// The query service with health and reflection, as routes beside `http`.
pub async fn with_grpc(
    http: axum::Router,
    service: QueryService,
    remediation: super::remediation::RemediationService,
) -> Result<axum::Router, tonic_reflection::server::Error> {
    use pb::remediation_server::RemediationServer;
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_serving::<pb::query_server::QueryServer<QueryService>>()
        .await;
    reporter
        .set_serving::<RemediationServer<super::remediation::RemediationService>>()
        .await;
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(DESCRIPTORS)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .with_service_name(SERVICE)
            .with_service_name(super::remediation::SERVICE)
            .with_service_name(tonic_health::pb::health_server::SERVICE_NAME)
    };
    let http = http.merge(super::web::router(remediation.clone()));
    Ok(tonic::service::Routes::from(http)
        .add_service(pb::query_server::QueryServer::new(service))
        .add_service(RemediationServer::new(remediation))
        .add_service(health)
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .into_axum_router())
}
