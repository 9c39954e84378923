//! The internal bearer token the controller, the gateway and the workers share (a mounted
//! Secret's file): read once at start, trimmed, never empty.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("reading the internal token from {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the internal token file {path} is empty")]
    Empty { path: PathBuf },
}

/// The token in `path`, without surrounding whitespace (a Secret written with `echo` ends in a
/// newline, which must not become part of the header).
pub fn read(path: &Path) -> Result<String, TokenError> {
    let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
        path: path.to_owned(),
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(TokenError::Empty { path: path.to_owned() });
    }
    Ok(token.to_owned())
}

/// The token in `path` when a file is named (a component that calls no worker needs none).
pub fn read_optional(path: Option<&Path>) -> Result<Option<String>, TokenError> {
    path.map(read).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_and_refuses_empty_or_missing_files() {
        let dir = std::env::temp_dir().join(format!("streamscan-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(read(&file).ok().as_deref(), Some("s3cret"));
        std::fs::write(&file, " \n").unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(read(&file), Err(TokenError::Empty { .. })));
        let missing = dir.join("missing");
        let err = read(&missing).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("missing") && err.starts_with("reading the internal token"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
