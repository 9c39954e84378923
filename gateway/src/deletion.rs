//! Whether a stored result may be deleted: only after a download whose digest the client
//! verified (the ladder of `DELETE .../result`, apart from the I/O).

use axum::http::StatusCode;
use streamscan_api::Download;

/// What a delete request leads to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Deletion {
    /// Ask the worker to delete it, then record it.
    Delete,
    /// Already deleted: answer as if now (a retried request).
    AlreadyDone,
    /// Refused: the status to answer, and why.
    Refused(StatusCode, &'static str),
}

/// Judges a delete: `sent` is the client's `X-Streamscan-Report-Sha256`, `stored` the digest of
/// the stored report. The digest is checked first, even for an already deleted result, so a
/// client never learns "deleted" without proving it holds the report.
pub fn judge(sent: Option<&str>, stored: &str, download: &Download) -> Deletion {
    let Some(sent) = sent else {
        return Deletion::Refused(
            StatusCode::PRECONDITION_REQUIRED,
            "send X-Streamscan-Report-Sha256 with the SHA-256 you verified on the downloaded report",
        );
    };
    if !sent.trim().eq_ignore_ascii_case(stored) {
        return Deletion::Refused(
            StatusCode::PRECONDITION_FAILED,
            "X-Streamscan-Report-Sha256 does not match the stored report's digest: download again and verify before deleting",
        );
    }
    if download.deleted {
        return Deletion::AlreadyDone;
    }
    if download.fetched_at.is_none() {
        return Deletion::Refused(
            StatusCode::CONFLICT,
            "the result has not been downloaded yet: download it, verify its digest, then delete",
        );
    }
    Deletion::Delete
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    const DIGEST: &str = "ab12";

    fn fetched() -> Download {
        Download {
            fetched_at: Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
            ..Download::default()
        }
    }

    #[test]
    fn a_verified_download_may_be_deleted_once() {
        assert_eq!(judge(Some("AB12 "), DIGEST, &fetched()), Deletion::Delete);
        let done = Download {
            deleted: true,
            ..fetched()
        };
        assert_eq!(judge(Some(DIGEST), DIGEST, &done), Deletion::AlreadyDone);
    }

    #[test]
    fn no_digest_a_wrong_one_or_no_download_is_refused() {
        let status = |d: Deletion| match d {
            Deletion::Refused(status, _) => Some(status),
            _ => None,
        };
        assert_eq!(
            status(judge(None, DIGEST, &fetched())),
            Some(StatusCode::PRECONDITION_REQUIRED)
        );
        let deleted = Download {
            deleted: true,
            ..fetched()
        };
        assert_eq!(
            status(judge(Some("00"), DIGEST, &deleted)),
            Some(StatusCode::PRECONDITION_FAILED),
            "the digest is checked before saying it is gone"
        );
        assert_eq!(
            status(judge(Some(DIGEST), DIGEST, &Download::default())),
            Some(StatusCode::CONFLICT)
        );
    }
}
