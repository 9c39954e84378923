//! The Streamscan API: the `AnalysisJob` custom resource, the progress-event schema, and the
//! names (labels, annotations, finalizers, condition types) every component shares, and which
//! worker pods are servers (the controller places on them, the gateway routes to them).

pub mod conditions;
pub mod event;
pub mod generate;
pub mod job;
pub mod names;
pub mod redact;
pub mod servers;
pub mod trace;

pub use event::{EVENT_VERSION, EventError, EventStatus, ProgressEvent};
pub use job::{
    AnalysisJob, AnalysisJobSpec, AnalysisJobStatus, AnalyzerName, AttemptRef, Download, Execution, ExecutionState,
    Phase, Progress, ResultSummary, SecretReference, SeverityCounts, Source, UploadSource, UrlSource, VolumeSource,
};
