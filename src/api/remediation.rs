//! The gRPC remediation API (`proto/homeostat/v1/remediation.proto`): what the
//! remediation stage decided and learned (read from its tables), and human
//! override (sent to the stage's inbox as control requests).
//!
//! Control methods need `authorization: Bearer <api.control_token>`; the token
//! is compared in constant time (`subtle`); with no token configured they are
//! refused, so a default install cannot be steered by whoever reaches the port.

use std::time::Duration;

use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Response, Status};

use super::query::pb;
use crate::detect::feedback::Tolerance;
use crate::flow::Message;
use crate::incident::IncidentLog;
use crate::pipeline::WindowEvent;
use crate::remediate::log::RemediationLog;
use crate::remediate::{Control, ControlReply, ControlRequest, HumanVerdict, RemediateInput};

/// The `homeostat.v1.Remediation` service name.
pub const SERVICE: &str = "homeostat.v1.Remediation";

/// How long a control request may wait for the stage.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// The remediation service.
#[derive(Clone)]
pub struct RemediationService {
    pub log: RemediationLog,
    /// The remediation stage's inbox (none when remediation is off).
    pub control: Option<mpsc::Sender<Message<RemediateInput>>>,
    pub token: String,
    /// Where a false positive's anomalies are found.
    pub incidents: IncidentLog,
    /// Detection's inbox, for humans' verdicts (weak: it must not keep
    /// detection running at shutdown).
    pub detection: Option<mpsc::WeakSender<Message<WindowEvent>>>,
}

impl RemediationService {
    /// Who is asking, once the bearer token checks out.
    fn authorize<T>(&self, request: &Request<T>) -> Result<String, Status> {
        if self.token.is_empty() {
            return Err(Status::unauthenticated(
                "control methods are off: set api.control_token (or HOMEOSTAT__API__CONTROL_TOKEN)",
            ));
        }
        let given = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if bool::from(given.as_bytes().ct_eq(self.token.as_bytes())) {
            Ok(request
                .remote_addr()
                .map_or_else(|| "api".to_string(), |a| format!("api client {a}")))
        } else {
            Err(Status::unauthenticated("a valid bearer token is required"))
        }
    }

    async fn ask(&self, request: ControlRequest) -> Result<ControlReply, Status> {
        let Some(inbox) = &self.control else {
            return Err(Status::failed_precondition("remediation is off"));
        };
        let (reply, answer) = oneshot::channel();
        let message = Message::Data(RemediateInput::Control(Control { request, reply }));
        tokio::time::timeout(CONTROL_TIMEOUT, async {
            inbox
                .send(message)
                .await
                .map_err(|_| Status::unavailable("the remediation stage has stopped"))?;
            answer
                .await
                .map_err(|_| Status::unavailable("the remediation stage has stopped"))
        })
        .await
        .map_err(|_| Status::deadline_exceeded("the remediation stage did not answer in time"))?
    }

    async fn control(
        &self,
        request: ControlRequest,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        match self.ask(request).await? {
            ControlReply::Done(message) => Ok(Response::new(pb::ControlResponse { message })),
            ControlReply::Refused(why) => Err(Status::not_found(why)),
            ControlReply::Pending(_) => Err(Status::internal("unexpected answer")),
        }
    }
}

#[tonic::async_trait]
impl pb::remediation_server::Remediation for RemediationService {
    async fn list_remediations(
        &self,
        _request: Request<pb::ListRemediationsRequest>,
    ) -> Result<Response<pb::ListRemediationsResponse>, Status> {
        let remediations = self
            .log
            .remediations()
            .into_iter()
            .map(|r| pb::RemediationState {
                incident: r.incident,
                state: r.state,
                service: r.service,
                class: r.class,
                playbook: r.playbook,
                attempts: r.attempts,
                command: r.command,
                action: r.action,
                updated_unix_ms: r.updated,
            })
            .collect();
        Ok(Response::new(pb::ListRemediationsResponse { remediations }))
    }

    async fn list_pending(
        &self,
        _request: Request<pb::ListPendingRequest>,
    ) -> Result<Response<pb::ListPendingResponse>, Status> {
        let ControlReply::Pending(held) = self.ask(ControlRequest::Pending).await? else {
            return Err(Status::internal("unexpected answer"));
        };
        let commands = held
            .into_iter()
            .map(|c| pb::PendingCommand {
                cloudevent_json: serde_json::to_string(&c).unwrap_or_default(),
                id: c.id,
                incident: c.data.incident,
                service: c.subject,
                action: c.data.action.as_str().to_string(),
                score: c.data.root_cause.score,
            })
            .collect();
        Ok(Response::new(pb::ListPendingResponse { commands }))
    }

    async fn list_decisions(
        &self,
        request: Request<pb::ListDecisionsRequest>,
    ) -> Result<Response<pb::ListDecisionsResponse>, Status> {
        let incident = request.into_inner().incident;
        let decisions = self
            .log
            .decisions()
            .into_iter()
            .filter(|d| incident == 0 || d.incident == incident)
            .map(|d| pb::Decision {
                seq: d.seq,
                at_unix_ms: d.at,
                incident: d.incident,
                command: d.command,
                service: d.service,
                action: d.action,
                verdict: d.verdict,
                reason: d.reason,
            })
            .collect();
        Ok(Response::new(pb::ListDecisionsResponse { decisions }))
    }

    async fn get_learning(
        &self,
        _request: Request<pb::GetLearningRequest>,
    ) -> Result<Response<pb::GetLearningResponse>, Status> {
        let entries = self
            .log
            .stats()
            .into_iter()
            .map(|s| pb::Learned {
                class: s.class,
                service: s.service,
                action: s.action,
                attempts: s.attempts,
                successes: s.successes,
                median_recovery_ms: s.median_recovery_ms.unwrap_or(-1.0),
                demoted: s.demoted,
            })
            .collect();
        Ok(Response::new(pb::GetLearningResponse { entries }))
    }

    async fn set_kill_switch(
        &self,
        request: Request<pb::SetKillSwitchRequest>,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        self.authorize(&request)?;
        self.control(ControlRequest::Kill(request.into_inner().on))
            .await
    }

    async fn pause_service(
        &self,
        request: Request<pb::PauseServiceRequest>,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        if r.service.is_empty() {
            return Err(Status::invalid_argument(
                "name the service to pause or resume",
            ));
        }
        self.control(ControlRequest::Pause {
            service: r.service,
            on: r.pause,
        })
        .await
    }

    async fn decide_command(
        &self,
        request: Request<pb::DecideCommandRequest>,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        let by = self.authorize(&request)?;
        let r = request.into_inner();
        self.control(ControlRequest::Decide {
            command: r.command,
            approve: r.approve,
            by,
        })
        .await
    }

    async fn mark_incident(
        &self,
        request: Request<pb::MarkIncidentRequest>,
    ) -> Result<Response<pb::ControlResponse>, Status> {
        let by = self.authorize(&request)?;
        let r = request.into_inner();
        let verdict = HumanVerdict::parse(&r.verdict).ok_or_else(|| {
            Status::invalid_argument(format!(
                "verdict {:?}: use false_positive or wrong_root_cause",
                r.verdict
            ))
        })?;
        let incident = self
            .incidents
            .snapshot()
            .into_iter()
            .find(|i| i.id == r.incident)
            .ok_or_else(|| Status::not_found(format!("no incident {} is held", r.incident)))?;
        let mut told = String::new();
        if verdict == HumanVerdict::FalsePositive {
            // Each series that misled tolerates as much deviation from now on.
            let verdicts: Vec<Tolerance> = incident
                .anomalies()
                .map(|a| Tolerance {
                    key: a.key.clone(),
                    deviation: (a.observed - a.expected).abs(),
                })
                .collect();
            let series = verdicts.len();
            let inbox = self.detection.as_ref().and_then(mpsc::WeakSender::upgrade);
            if let Some(inbox) = inbox
                && inbox
                    .send(Message::Data(WindowEvent::Feedback(verdicts)))
                    .await
                    .is_ok()
            {
                told = format!("; {series} series made less sensitive");
            }
        }
        if self.control.is_none() {
            return Ok(Response::new(pb::ControlResponse {
                message: format!("incident {} marked {}{told}", r.incident, verdict.as_str()),
            }));
        }
        let mut response = self
            .control(ControlRequest::Mark {
                incident: r.incident,
                verdict,
                root_cause: r.root_cause,
                comment: r.comment,
                by,
            })
            .await?;
        response.get_mut().message.push_str(&told);
        Ok(response)
    }
}
