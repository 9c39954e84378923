//! The worker's volume: results (zstd, with the SHA-256 of the compressed bytes), checkpoints
//! and event-stream positions of running attempts, and uploads.
//!
//! Layout under the data directory:
//! `results/<uid>.json.zst` and `.sha256`; `jobs/<uid>/checkpoint.json` and `stream.json`;
//! `uploads/<uid>`. Every file is written to a temporary name and renamed, so a crash leaves
//! either the old or the new content.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::decide::AttemptId;
use streamscan_engine::hex;
use streamscan_engine::pipeline::Checkpoint;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid analyzeId {0:?}")]
    InvalidId(String),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("encoding {0}: {1}")]
    Json(&'static str, serde_json::Error),
}

/// A checkpoint of one attempt, as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SavedCheckpoint {
    pub attempt: i32,
    pub event_id: String,
    pub checkpoint: Checkpoint,
}

/// Where an attempt's event stream stands: written after each Kafka commit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamState {
    pub attempt: i32,
    pub event_id: String,
    /// The seq of the next event.
    pub next_seq: u64,
    /// bytesProcessed of the last committed event.
    pub last_bytes: u64,
}

/// A stored result.
pub struct StoredResult {
    pub path: PathBuf,
    pub size: u64,
    pub digest: String,
}

#[derive(Clone, Debug)]
pub struct Store {
    root: PathBuf,
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Job uids (and so analyzeIds) are Kubernetes UIDs; anything else could name another file.
pub fn check_id(id: &str) -> Result<&str, StoreError> {
    let ok = !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(id)
    } else {
        Err(StoreError::InvalidId(id.to_owned()))
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).map_err(io_err("creating", &tmp))?;
    f.write_all(bytes).map_err(io_err("writing", &tmp))?;
    f.sync_all().map_err(io_err("syncing", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("renaming", path))
}

fn remove(path: &Path) -> Result<bool, StoreError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("deleting", path)(e)),
    }
}

/// Counts bytes and hashes them on their way to the file.
struct HashingWriter<W> {
    inner: W,
    hash: Sha256,
    len: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Store {
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for dir in ["results", "jobs", "uploads"] {
            let path = root.join(dir);
            fs::create_dir_all(&path).map_err(io_err("creating", &path))?;
        }
        Ok(Store { root: root.to_owned() })
    }

    fn job_dir(&self, uid: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("jobs").join(check_id(uid)?))
    }

    pub fn result_path(&self, uid: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("results").join(format!("{}.json.zst", check_id(uid)?)))
    }

    fn digest_path(&self, uid: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("results").join(format!("{}.sha256", check_id(uid)?)))
    }

    pub fn upload_path(&self, uid: &str) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("uploads").join(check_id(uid)?))
    }

    fn read_json<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Option<T> {
        let bytes = fs::read(path).ok()?;
        match serde_json::from_slice(&bytes) {
            Ok(v) => Some(v),
            Err(err) => {
                // A torn or foreign file is not worth failing over: start that part afresh.
                tracing::warn!(path = %path.display(), %err, "ignoring an unreadable state file");
                None
            }
        }
    }

    fn write_json<T: Serialize>(&self, uid: &str, name: &str, what: &'static str, value: &T) -> Result<(), StoreError> {
        let dir = self.job_dir(uid)?;
        fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Json(what, e))?;
        write_atomic(&dir.join(name), &bytes)
    }

    pub fn save_checkpoint(&self, uid: &str, saved: &SavedCheckpoint) -> Result<(), StoreError> {
        self.write_json(uid, "checkpoint.json", "a checkpoint", saved)
    }

    /// The stored checkpoint of exactly this attempt.
    pub fn load_checkpoint(&self, uid: &str, attempt: &AttemptId) -> Option<Checkpoint> {
        let saved: SavedCheckpoint = self.read_json(&self.job_dir(uid).ok()?.join("checkpoint.json"))?;
        (saved.attempt == attempt.attempt && saved.event_id == attempt.event_id).then_some(saved.checkpoint)
    }

    pub fn save_stream(&self, uid: &str, state: &StreamState) -> Result<(), StoreError> {
        self.write_json(uid, "stream.json", "the event stream state", state)
    }

    /// Where the event stream of exactly this attempt stands (fresh when none is stored).
    pub fn load_stream(&self, uid: &str, attempt: &AttemptId) -> StreamState {
        let fresh = StreamState {
            attempt: attempt.attempt,
            event_id: attempt.event_id.clone(),
            next_seq: 0,
            last_bytes: 0,
        };
        let Ok(dir) = self.job_dir(uid) else { return fresh };
        match self.read_json::<StreamState>(&dir.join("stream.json")) {
            Some(s) if s.attempt == attempt.attempt && s.event_id == attempt.event_id => s,
            _ => fresh,
        }
    }

    /// Forgets the running state of a job (checkpoint, stream position).
    pub fn clear_work(&self, uid: &str) -> Result<(), StoreError> {
        let dir = self.job_dir(uid)?;
        match fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("deleting", &dir)(e)),
        }
    }

    /// Deletes what an attempt wrote (checkpoint, partial outputs, result) but not the upload,
    /// which a next attempt still needs: after a failure, or when a newer attempt owns the job.
    pub fn discard_attempt(&self, uid: &str) -> Result<(), StoreError> {
        self.clear_work(uid)?;
        self.delete_result(uid)?;
        Ok(())
    }

    /// Deletes everything written for a job, upload included: the rollback of a cancel, a fatal
    /// failure, the job's deletion. Returns whether a result was stored.
    pub fn forget(&self, uid: &str) -> Result<bool, StoreError> {
        self.clear_work(uid)?;
        let had_result = self.delete_result(uid)?;
        self.delete_upload(uid)?;
        Ok(had_result)
    }

    /// Writes the report zstd-compressed; returns its size and the SHA-256 of the compressed bytes.
    pub fn write_result<T: Serialize>(&self, uid: &str, report: &T) -> Result<StoredResult, StoreError> {
        let path = self.result_path(uid)?;
        let tmp = path.with_extension("zst.tmp");
        let file = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        let hashing = HashingWriter {
            inner: BufWriter::new(file),
            hash: Sha256::new(),
            len: 0,
        };
        let mut encoder = zstd::Encoder::new(hashing, 3).map_err(io_err("compressing", &tmp))?;
        serde_json::to_writer(&mut encoder, report).map_err(|e| StoreError::Json("the report", e))?;
        let hashing = encoder.finish().map_err(io_err("compressing", &tmp))?;
        let (size, digest) = (hashing.len, hex::encode(&hashing.hash.finalize()));
        let file = hashing
            .inner
            .into_inner()
            .map_err(|e| io_err("writing", &tmp)(e.into_error()))?;
        file.sync_all().map_err(io_err("syncing", &tmp))?;
        write_atomic(&self.digest_path(uid)?, digest.as_bytes())?;
        fs::rename(&tmp, &path).map_err(io_err("renaming", &path))?;
        Ok(StoredResult { path, size, digest })
    }

    /// The stored result of a job, if any.
    pub fn result(&self, uid: &str) -> Result<Option<StoredResult>, StoreError> {
        let path = self.result_path(uid)?;
        let size = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        let digest_path = self.digest_path(uid)?;
        let digest = fs::read_to_string(&digest_path).map_err(io_err("reading", &digest_path))?;
        Ok(Some(StoredResult {
            path,
            size,
            digest: digest.trim().to_owned(),
        }))
    }

    /// Deletes a stored result; whether there was one.
    pub fn delete_result(&self, uid: &str) -> Result<bool, StoreError> {
        let existed = remove(&self.result_path(uid)?)?;
        remove(&self.digest_path(uid)?)?;
        Ok(existed)
    }

    /// Deletes a job's uploaded file, once no attempt can need it.
    pub fn delete_upload(&self, uid: &str) -> Result<(), StoreError> {
        remove(&self.upload_path(uid)?)?;
        Ok(())
    }

    /// Whether a result is stored for the job.
    pub fn has_result(&self, uid: &str) -> Result<bool, StoreError> {
        Ok(self.result_path(uid)?.exists())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn result_digest_is_of_the_compressed_bytes_and_round_trips() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let stored = store.write_result("u-1", &serde_json::json!({"hello": "world"}))?;
        let bytes = fs::read(&stored.path)?;
        assert_eq!(bytes.len() as u64, stored.size);
        assert_eq!(hex::encode(&Sha256::digest(&bytes)), stored.digest);
        let json: serde_json::Value = serde_json::from_slice(&zstd::decode_all(&bytes[..])?)?;
        assert_eq!(json["hello"], "world");
        assert_eq!(store.result("u-1")?.map(|r| r.digest), Some(stored.digest));
        assert!(store.delete_result("u-1")?);
        assert!(!store.delete_result("u-1")?);
        assert!(store.result("u-1")?.is_none());
        Ok(())
    }

    #[test]
    fn state_belongs_to_one_attempt() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        let a1 = AttemptId {
            attempt: 1,
            event_id: "e1".into(),
        };
        let a2 = AttemptId {
            attempt: 2,
            event_id: "e2".into(),
        };
        let state = StreamState {
            attempt: 1,
            event_id: "e1".into(),
            next_seq: 7,
            last_bytes: 100,
        };
        store.save_stream("u", &state)?;
        assert_eq!(store.load_stream("u", &a1), state);
        assert_eq!(store.load_stream("u", &a2).next_seq, 0);
        store.forget("u")?;
        assert_eq!(store.load_stream("u", &a1).next_seq, 0);
        Ok(())
    }

    #[test]
    fn forget_deletes_the_upload_the_result_and_the_work() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path())?;
        std::fs::write(store.upload_path("u")?, b"the uploaded file")?;
        store.write_result("u", &serde_json::json!({"findings": []}))?;
        assert!(store.has_result("u")?);
        assert!(store.forget("u")?, "a result was stored");
        assert!(!store.upload_path("u")?.exists());
        assert!(!store.has_result("u")?);
        assert!(!store.forget("u")?, "nothing left the second time");
        Ok(())
    }

    #[test]
    fn refuses_ids_that_could_name_other_files() {
        for bad in ["", "..", "a/b", "../x", "a b", "a.b"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        assert!(check_id("0b7c6f1e-4a8e-4c1b-9d55-2f9f1f3f7a10").is_ok());
    }
}
