//! End-to-end support for Streamscan: where no cluster exists, a Kubernetes API simulator that
//! the real binaries talk to over HTTP.
