//! The `AnalysisJob` custom resource: one analysis of one file, pinned to one server.
//!
//! Status fields each have exactly one writer, noted on each field: the controller owns
//! placement and the lifecycle, the worker owns what it observed while running the attempt,
//! and the gateway owns what happened to the result after it was stored.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An analysis of one file by the selected analyzers on one Streamscan server.
// clippy reads the repeated `type_`/`priority` keys of distinct printcolumns as duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "streamscan.io",
    version = "v1alpha1",
    kind = "AnalysisJob",
    plural = "analysisjobs",
    singular = "analysisjob",
    shortname = "aj",
    category = "streamscan",
    namespaced,
    status = "AnalysisJobStatus",
    derive = "PartialEq",
    doc = "An analysis of one file, pinned to one Streamscan server, with live progress and a stored result.",
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Lifecycle phase"
    ),
    printcolumn(
        name = "Server",
        type_ = "string",
        json_path = ".status.serverId",
        description = "serverId of the pinned worker"
    ),
    printcolumn(
        name = "Progress",
        type_ = "integer",
        json_path = ".status.progress.percent",
        description = "Percent of the file analysed"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(
        name = "User",
        type_ = "string",
        json_path = ".spec.userId",
        priority = "1",
        description = "Who asked for the analysis"
    ),
    printcolumn(
        name = "Attempt",
        type_ = "integer",
        json_path = ".status.attempt",
        priority = "1",
        description = "Current attempt, from 1"
    )
)]
#[x_kube(
    validation = Rule::new("!(has(self.serverId) && has(self.serverSelector))")
        .message("spec.serverId and spec.serverSelector are mutually exclusive: pin one server, or restrict the eligible servers, not both")
        .reason(Reason::FieldValueForbidden),
    validation = Rule::new("!has(oldSelf.cancel) || !oldSelf.cancel || (has(self.cancel) && self.cancel)")
        .message("spec.cancel cannot go back from true to false: a cancelled job stays cancelled; create a new AnalysisJob instead")
        .reason(Reason::FieldValueForbidden)
)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisJobSpec {
    /// Who asked for the analysis; only this user sees the job through the gateway. Immutable.
    #[x_kube(
        validation = Rule::new("self.size() > 0").message("spec.userId must not be empty"),
        validation = Rule::new("self.matches('^[A-Za-z0-9][A-Za-z0-9._@:+-]*$')")
            .message("spec.userId must start with a letter or digit and contain only letters, digits and . _ @ : + -"),
        validation = Rule::new("self == oldSelf").message("spec.userId is immutable: it cannot change after creation")
    )]
    #[schemars(length(max = 253))]
    pub user_id: String,

    /// The file to analyse: exactly one of `url`, `volume` or `upload`. Immutable.
    #[x_kube(
        validation = Rule::new("self == oldSelf")
            .message("spec.source is immutable: create a new AnalysisJob to analyse another file")
    )]
    pub source: Source,

    /// Analyzers to run; all built-in analyzers when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "set"))]
    pub analyzers: Option<Vec<AnalyzerName>>,

    /// Pin the job to the server with this `serverId`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("self.matches('^[A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?$')")
            .message("spec.serverId must be a valid label value: up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit")
    )]
    #[schemars(length(max = 63))]
    pub server_id: Option<String>,

    /// Only servers whose pod labels match this selector are eligible.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_selector: Option<LabelSelector>,

    /// Fail the job with `DeadlineExceeded` when it has not finished this many seconds after it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("spec.activeDeadlineSeconds must be a positive number of seconds"))]
    pub active_deadline_seconds: Option<i64>,

    /// Retries of failures the worker reports as retriable (default 6, as for Kubernetes Jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("spec.backoffLimit must be zero or more"))]
    pub backoff_limit: Option<i32>,

    /// Delete the job this many seconds after it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("spec.ttlSecondsAfterFinished must be zero or more"))]
    pub ttl_seconds_after_finished: Option<i64>,

    /// Hold the job: it releases its server and resumes when set back to false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,

    /// Stop the analysis and roll back its partial work. Cannot be undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel: Option<bool>,
}

/// Where the file comes from. Exactly one member is set.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("(has(self.url) ? 1 : 0) + (has(self.volume) ? 1 : 0) + (has(self.upload) ? 1 : 0) == 1")
        .message("spec.source must set exactly one of url, volume or upload")
)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<UrlSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume: Option<VolumeSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadSource>,
}

/// A file fetched over HTTP(S) by the worker.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UrlSource {
    /// The http:// or https:// address of the file.
    #[x_kube(
        validation = Rule::new("self.matches('^https?://[^/?#\\\\s]+([/?#]\\\\S*)?$')")
            .message("spec.source.url.location must be an http:// or https:// URL with a host")
    )]
    #[schemars(length(max = 4096))]
    pub location: String,
    /// Expected SHA-256 of the file (hex); a mismatch fails the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = sha256_rule())]
    #[schemars(length(max = 64))]
    pub sha256: Option<String>,
    /// A Secret in the job's namespace whose keys are sent as HTTP request headers. Only when the
    /// installation allows it (Helm value worker.urlHeadersSecrets), and only a Secret labeled
    /// streamscan.io/url-headers=true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret_ref: Option<SecretReference>,
}

/// A file on the read-only source volume mounted into every worker.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct VolumeSource {
    /// Path of the file, relative to the source volume's root.
    #[x_kube(
        validation = Rule::new("self.size() > 0 && !self.startsWith('/')")
            .message("spec.source.volume.path must be a non-empty path relative to the source volume root"),
        validation = Rule::new("!self.matches('(^|/)[.][.](/|$)')")
            .message("spec.source.volume.path must not contain '..': it must stay inside the source volume")
    )]
    #[schemars(length(max = 4096))]
    pub path: String,
    /// Expected SHA-256 of the file (hex); a mismatch fails the job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = sha256_rule())]
    #[schemars(length(max = 64))]
    pub sha256: Option<String>,
}

/// A file streamed in through the gateway to the pinned server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UploadSource {
    /// Size of the file in bytes, when known in advance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("spec.source.upload.sizeBytes must be zero or more"))]
    pub size_bytes: Option<i64>,
    /// Expected SHA-256 of the file (hex); a mismatch fails the upload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = sha256_rule())]
    #[schemars(length(max = 64))]
    pub sha256: Option<String>,
    /// The file's original name, for reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 255))]
    pub file_name: Option<String>,
}

fn sha256_rule() -> kube::core::Rule {
    kube::core::Rule::new("self.matches('^[0-9a-fA-F]{64}$')")
        .message("sha256 must be exactly 64 hexadecimal characters")
}

/// A reference to a Secret in the job's namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// The built-in analyzers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum AnalyzerName {
    Digest,
    Filetype,
    Entropy,
    Secrets,
    Iocs,
    Components,
    Model,
}

impl AnalyzerName {
    /// Every analyzer, in report order.
    pub const ALL: [AnalyzerName; 7] = [
        AnalyzerName::Digest,
        AnalyzerName::Filetype,
        AnalyzerName::Entropy,
        AnalyzerName::Secrets,
        AnalyzerName::Iocs,
        AnalyzerName::Components,
        AnalyzerName::Model,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AnalyzerName::Digest => "digest",
            AnalyzerName::Filetype => "filetype",
            AnalyzerName::Entropy => "entropy",
            AnalyzerName::Secrets => "secrets",
            AnalyzerName::Iocs => "iocs",
            AnalyzerName::Components => "components",
            AnalyzerName::Model => "model",
        }
    }
}

impl std::fmt::Display for AnalyzerName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for AnalyzerName {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AnalyzerName::ALL.into_iter().find(|a| a.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = AnalyzerName::ALL.iter().map(|a| a.as_str()).collect();
            format!("unknown analyzer {s:?}: expected one of {}", names.join(", "))
        })
    }
}

/// Lifecycle phase of a job.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    Pending,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl Phase {
    /// Whether the job has ended and will not run again.
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "Pending",
            Phase::Scheduled => "Scheduled",
            Phase::Running => "Running",
            Phase::Succeeded => "Succeeded",
            Phase::Failed => "Failed",
            Phase::Cancelled => "Cancelled",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a job. Each field has one writer, named in its description.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisJobStatus {
    /// Controller: the `metadata.generation` this status was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Controller: lifecycle phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Controller: standard conditions (Scheduled, Running, Complete, Failed, Cancelled, Suspended).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// Controller: the server the current attempt is pinned to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_id: Option<String>,
    /// Controller: the pod that carried `serverId` when the attempt was placed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Controller: the current attempt, from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    /// Controller: identity of the current attempt, shared by all of its progress events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    /// Controller: the attempts before the current one, oldest first, at most 16: the gateway
    /// accepts late progress events of these attempts and of the current one, no others.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past_attempts: Vec<AttemptRef>,
    /// Controller: retriable failures so far, bounded by `spec.backoffLimit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_attempts: Option<i32>,
    /// Controller: when a retry after a retriable failure may be placed (exponential backoff).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_attempt_time: Option<Time>,
    /// Controller: attempts made to delete the stored result while the job is being deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleanup_attempts: Option<i32>,
    /// Controller: when the job was placed (reset by suspend, as for Kubernetes Jobs); the
    /// start of `activeDeadlineSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// Controller: when the job reached Succeeded, Failed or Cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Worker: how the current attempt is going, as the worker last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution: Option<Execution>,
    /// Worker: bytes processed so far (written at most every 2 s or 5 %).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<Progress>,
    /// Worker: summary of the stored result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ResultSummary>,
    /// Gateway: what happened to the stored result after the analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download: Option<Download>,
}

/// Most past attempts a status keeps (the oldest are dropped first).
pub const MAX_PAST_ATTEMPTS: usize = 16;

/// One attempt's identity: what its progress events must carry.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AttemptRef {
    pub attempt: i32,
    pub event_id: String,
    pub server_id: String,
}

/// The worker's report on one attempt.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    /// The attempt this report is about; the controller ignores reports of other attempts.
    pub attempt: i32,
    pub event_id: String,
    pub state: ExecutionState,
    /// CamelCase reason of a failure or cancellation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether a failure may succeed when retried (network errors, worker shutdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retriable: Option<bool>,
    /// Byte offset of the last checkpoint written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint_bytes: Option<i64>,
}

/// State of one attempt on its worker.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ExecutionState {
    #[default]
    Running,
    Succeeded,
    Failed,
    /// Stopped on request and its partial work deleted.
    Cancelled,
}

/// Progress of the current attempt.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    pub bytes_processed: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<i64>,
    /// Whole percent, 0 to 100, when the total is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_per_second: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<Time>,
}

/// Findings by severity.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct SeverityCounts {
    pub critical: i64,
    pub high: i64,
    pub medium: i64,
    pub low: i64,
    pub info: i64,
}

/// Summary of a stored result.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ResultSummary {
    /// Length of the analysed stream in bytes.
    pub bytes: i64,
    /// SHA-256 of the analysed file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    pub findings: SeverityCounts,
    /// SHA-256 of the stored (compressed) report, as served on download.
    pub report_digest: String,
    /// Size of the stored (compressed) report in bytes.
    pub report_size: i64,
    /// The server that holds the report.
    pub server_id: String,
}

/// What happened to a stored result after the analysis (written by the gateway).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Download {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetched_at: Option<Time>,
    /// The result was deleted from its server after a verified download.
    #[serde(default)]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_at: Option<Time>,
}

impl AnalysisJob {
    /// The job's phase, `Pending` before the controller's first reconcile.
    pub fn phase(&self) -> Phase {
        self.status.as_ref().and_then(|s| s.phase).unwrap_or(Phase::Pending)
    }

    pub fn is_cancel_requested(&self) -> bool {
        self.spec.cancel.unwrap_or(false)
    }

    pub fn is_suspended(&self) -> bool {
        self.spec.suspend.unwrap_or(false)
    }
}

impl Source {
    /// The kind of source, for messages and metrics.
    pub fn kind(&self) -> &'static str {
        if self.url.is_some() {
            "url"
        } else if self.volume.is_some() {
            "volume"
        } else if self.upload.is_some() {
            "upload"
        } else {
            "none"
        }
    }

    /// Whether another server can read the source again (an upload lives on one server only).
    pub fn is_rereadable(&self) -> bool {
        self.url.is_some() || self.volume.is_some()
    }

    /// The expected SHA-256 of the file, whatever the kind.
    pub fn expected_sha256(&self) -> Option<&str> {
        self.url
            .as_ref()
            .and_then(|u| u.sha256.as_deref())
            .or_else(|| self.volume.as_ref().and_then(|v| v.sha256.as_deref()))
            .or_else(|| self.upload.as_ref().and_then(|u| u.sha256.as_deref()))
    }
}
