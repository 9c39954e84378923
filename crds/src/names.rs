//! Every label, annotation, finalizer, condition type and reason Streamscan writes, in one place,
//! so that the controller, the workers, the gateway and the Helm chart agree on the spelling.

/// API group of every Streamscan resource.
pub const GROUP: &str = "streamscan.io";
/// API version served by this crate.
pub const VERSION: &str = "v1alpha1";

/// Label on worker pods (their identity) and on pinned jobs (their server).
pub const LABEL_SERVER_ID: &str = "streamscan.io/server-id";
/// Label on worker pods naming the component, used by the default worker selector.
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
/// Value of [`LABEL_COMPONENT`] on worker pods.
pub const COMPONENT_WORKER: &str = "worker";
/// Default label selector the controller uses to find worker pods.
pub const DEFAULT_WORKER_SELECTOR: &str = "app.kubernetes.io/component=worker";

/// The ordinal a StatefulSet gives each of its pods (Kubernetes 1.28+); a worker's serverId.
pub const LABEL_POD_INDEX: &str = "apps.kubernetes.io/pod-index";

/// Pod annotation overriding the controller's default per-server job capacity.
pub const ANNOTATION_CAPACITY: &str = "streamscan.io/capacity";
/// Pod annotation naming the port of the worker's HTTP service (results, uploads).
pub const ANNOTATION_HTTP_PORT: &str = "streamscan.io/http-port";
/// The worker's HTTP port when its pod has no [`ANNOTATION_HTTP_PORT`] (the worker's default
/// `--http-addr` port).
pub const DEFAULT_WORKER_HTTP_PORT: u16 = 8080;
/// Secret label that lets a url source's `headersSecretRef` name the Secret (value `true`): no
/// other Secret is ever read for request headers.
pub const LABEL_URL_HEADERS: &str = "streamscan.io/url-headers";
/// Header with the SHA-256 of a stored report: on the worker's and the gateway's result download,
/// and on the gateway's result DELETE (the digest the client verified).
pub const HEADER_REPORT_SHA256: &str = "x-streamscan-report-sha256";
/// Header with the SHA-256 an upload must have (the gateway passes the client's on to the worker).
pub const HEADER_UPLOAD_SHA256: &str = "x-streamscan-sha256";
/// Job annotation holding the gateway's idempotency key of the request that created it.
pub const ANNOTATION_IDEMPOTENCY_KEY: &str = "streamscan.io/idempotency-key";
/// On an AnalysisJob: the W3C `traceparent` of the request that created it (the gateway sets it
/// from the request's header, or starts a trace); the worker's events continue that trace.
pub const ANNOTATION_TRACEPARENT: &str = "streamscan.io/traceparent";

/// Finalizer that keeps a job until the worker holding its results has deleted them.
pub const FINALIZER_RESULTS: &str = "streamscan.io/results-cleanup";

/// Field manager names, one per writer, so server-side apply keeps ownership visible.
pub const MANAGER_CONTROLLER: &str = "streamscan-controller";
pub const MANAGER_WORKER: &str = "streamscan-worker";
pub const MANAGER_GATEWAY: &str = "streamscan-gateway";

/// Condition types on `AnalysisJob.status.conditions`.
pub mod condition {
    /// The job has a server (`True`) or is waiting for one (`False`).
    pub const SCHEDULED: &str = "Scheduled";
    /// The worker is analysing the current attempt.
    pub const RUNNING: &str = "Running";
    /// The analysis finished and its result is stored.
    pub const COMPLETE: &str = "Complete";
    /// The job ended without a result.
    pub const FAILED: &str = "Failed";
    /// The job was cancelled and its partial work rolled back.
    pub const CANCELLED: &str = "Cancelled";
    /// `spec.suspend` holds the job; it keeps no server meanwhile.
    pub const SUSPENDED: &str = "Suspended";
}

/// CamelCase reasons used on conditions, Events and failures.
pub mod reason {
    pub const CREATED: &str = "Created";
    pub const NO_SERVER_AVAILABLE: &str = "NoServerAvailable";
    pub const PLACED: &str = "Placed";
    pub const STARTED: &str = "Started";
    pub const COMPLETED: &str = "Completed";
    pub const DEADLINE_EXCEEDED: &str = "DeadlineExceeded";
    pub const BACKOFF_LIMIT_EXCEEDED: &str = "BackoffLimitExceeded";
    pub const SERVER_UNAVAILABLE: &str = "ServerUnavailable";
    pub const SOURCE_LOST: &str = "SourceLost";
    pub const CANCELLED: &str = "Cancelled";
    pub const SUSPENDED: &str = "Suspended";
    pub const DUPLICATE_SERVER_ID: &str = "DuplicateServerId";
    /// A pod carries a worker's labels but is not a member of the worker StatefulSet.
    pub const STRAY_WORKER_POD: &str = "StrayWorkerPod";
    pub const ANALYSIS_FAILED: &str = "AnalysisFailed";
    pub const RETRYING: &str = "Retrying";
    /// `spec.suspend` was cleared.
    pub const RESUMED: &str = "Resumed";
    /// `spec.cancel` is set; the server is asked to stop and roll back.
    pub const CANCEL_REQUESTED: &str = "CancelRequested";
    /// The deleted job's stored result was removed from its server.
    pub const RESULTS_DELETED: &str = "ResultsDeleted";
    /// The deleted job's stored result could not be removed after the cleanup attempts.
    pub const RESULTS_LEFT_BEHIND: &str = "ResultsLeftBehind";
    /// The worker could not publish the attempt's progress events (Kafka).
    pub const EVENTS_UNAVAILABLE: &str = "EventsUnavailable";
    /// The worker could not store the attempt's result on its volume.
    pub const RESULT_NOT_STORED: &str = "ResultNotStored";
    // Why an attempt failed (status.execution.reason, the FAILED event), set by the worker.
    pub const SOURCE_NOT_FOUND: &str = "SourceNotFound";
    pub const SOURCE_UNAVAILABLE: &str = "SourceUnavailable";
    pub const SOURCE_READ_FAILED: &str = "SourceReadFailed";
    pub const SOURCE_CHANGED: &str = "SourceChanged";
    pub const SOURCE_VOLUME_UNAVAILABLE: &str = "SourceVolumeUnavailable";
    pub const PATH_ESCAPES_ROOT: &str = "PathEscapesRoot";
    pub const UNSUPPORTED_INPUT: &str = "UnsupportedInput";
    pub const UPLOAD_MISSING: &str = "UploadMissing";
    pub const HEADERS_SECRET_NOT_FOUND: &str = "HeadersSecretNotFound";
    pub const HEADERS_SECRET_UNAVAILABLE: &str = "HeadersSecretUnavailable";
    pub const INVALID_HEADERS_SECRET: &str = "InvalidHeadersSecret";
    pub const BAD_CHECKPOINT: &str = "BadCheckpoint";
    pub const ANALYZER_UNAVAILABLE: &str = "AnalyzerUnavailable";
    pub const ANALYZER_FAILED: &str = "AnalyzerFailed";
    pub const DIGEST_MISMATCH: &str = "DigestMismatch";
    pub const HEADERS_SECRET_NOT_ALLOWED: &str = "HeadersSecretNotAllowed";
    /// A url source (or a redirect hop) leads to an address the worker's egress policy denies.
    pub const EGRESS_DENIED: &str = "EgressDenied";
    /// A redirect from https to http, without a usable Location, or one too many.
    pub const REDIRECT_REFUSED: &str = "RedirectRefused";
}
