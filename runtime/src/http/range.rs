//! The `Range` request header for byte ranges of a resource of known size (RFC 9110 §14): one
//! range, as `curl -C -` and download tools send it. Several ranges in one request are not
//! served (the whole resource is sent instead, which the RFC allows).

use std::ops::Range;

/// What a `Range` header asks of a resource of `size` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum Wanted {
    /// No usable range: send the whole resource (200).
    Whole,
    /// These bytes (206 with `Content-Range: bytes start-(end-1)/size`).
    Part(Range<u64>),
    /// A range that lies wholly past the end (416 with `Content-Range: bytes */size`).
    Unsatisfiable,
}

/// Interprets the value of a `Range` header (`None`: no header).
pub fn wanted(header: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Wanted::Whole;
    };
    if spec.contains(',') {
        return Wanted::Whole;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return Wanted::Whole;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (first.trim(), last.trim()) {
        ("", suffix) => match num(suffix) {
            Some(0) => Wanted::Unsatisfiable,
            Some(_) if size == 0 => Wanted::Unsatisfiable,
            Some(n) => Wanted::Part(size.saturating_sub(n)..size),
            None => Wanted::Whole,
        },
        (a, "") => match num(a) {
            Some(a) if a < size => Wanted::Part(a..size),
            Some(_) => Wanted::Unsatisfiable,
            None => Wanted::Whole,
        },
        (a, b) => match (num(a), num(b)) {
            (Some(a), Some(b)) if a <= b => {
                if a >= size {
                    Wanted::Unsatisfiable
                } else {
                    Wanted::Part(a..b.saturating_add(1).min(size))
                }
            }
            _ => Wanted::Whole,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_as_rfc_9110_reads_them() {
        assert_eq!(wanted(None, 100), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=0-9"), 100), Wanted::Part(0..10));
        assert_eq!(wanted(Some("bytes=90-"), 100), Wanted::Part(90..100));
        assert_eq!(wanted(Some("bytes=90-200"), 100), Wanted::Part(90..100));
        assert_eq!(wanted(Some("bytes=-10"), 100), Wanted::Part(90..100));
        assert_eq!(wanted(Some("bytes=-200"), 100), Wanted::Part(0..100));
        assert_eq!(wanted(Some("bytes=100-"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=100-120"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=-0"), 100), Wanted::Unsatisfiable);
        assert_eq!(wanted(Some("bytes=-5"), 0), Wanted::Unsatisfiable);
        // Malformed or unsupported: the whole resource.
        assert_eq!(wanted(Some("bytes=9-3"), 100), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=0-1,5-6"), 100), Wanted::Whole);
        assert_eq!(wanted(Some("items=0-1"), 100), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=x-"), 100), Wanted::Whole);
        assert_eq!(wanted(Some("bytes=+1-2"), 100), Wanted::Whole);
    }
}
