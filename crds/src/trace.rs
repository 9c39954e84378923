//! W3C trace context: the `traceparent` a job carries from the gateway's create request, through
//! the AnalysisJob (annotation `streamscan.io/traceparent`) and every Kafka record (header and
//! the event's `traceparent` field), to the events a client receives.

use std::fmt;

/// One `traceparent` value (version `00`): the trace, the span that is the parent of the next
/// one, and the trace flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

/// The `sampled` trace flag.
pub const SAMPLED: u8 = 0x01;

impl TraceParent {
    /// Parses a `traceparent` header as the W3C spec says a receiver must: version `00` is exactly
    /// 55 characters; a higher version may append `-…` fields, which are ignored; `ff`, upper-case
    /// hex and all-zero ids are invalid. `None` for anything invalid (the caller starts a new
    /// trace, as the spec asks).
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let version = value.get(..2)?;
        let fixed = value.get(..55)?;
        match version {
            "00" if value.len() != 55 => return None,
            "ff" => return None,
            _ if value.len() > 55 && value.as_bytes()[55] != b'-' => return None,
            _ => {}
        }
        let mut parts = fixed.split('-');
        let (v, trace, parent, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let version_ok = v.len() == 2 && hex_bytes::<1>(v).is_some();
        let trace_id = hex_bytes::<16>(trace)?;
        let parent_id = hex_bytes::<8>(parent)?;
        let [flags] = hex_bytes::<1>(flags)?;
        if !version_ok || trace_id == [0; 16] || parent_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// The same trace and flags with `parent_id` as the parent: what a hop that makes its own span
    /// passes on. An all-zero id (invalid on the wire) becomes 1.
    pub fn with_parent(&self, mut parent_id: [u8; 8]) -> Self {
        if parent_id == [0; 8] {
            parent_id[7] = 1;
        }
        TraceParent { parent_id, ..*self }
    }

    /// The trace id as 32 lower-case hex digits (for logs).
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.parent_id),
            self.flags
        )
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `N` bytes from exactly `2N` lower-case hex digits.
fn hex_bytes<const N: usize>(text: &str) -> Option<[u8; N]> {
    let digits = text.as_bytes();
    if digits.len() != 2 * N {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0; N];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn round_trips_the_spec_example() {
        let t = TraceParent::parse(SPEC_EXAMPLE).unwrap_or_else(|| panic!("valid"));
        assert_eq!(t.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(t.flags, SAMPLED);
        assert_eq!(t.to_string(), SPEC_EXAMPLE);
        let child = t.with_parent([1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            child.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0102030405060708-01"
        );
        assert_eq!(t.with_parent([0; 8]).parent_id, [0, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn refuses_what_the_spec_calls_invalid() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
        // A later version may add fields; the first four are read.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next";
        assert!(TraceParent::parse(future).is_some());
        assert_eq!(
            TraceParent::parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x"),
            None
        );
    }
}
