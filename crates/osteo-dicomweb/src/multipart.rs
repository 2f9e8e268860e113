//! `multipart/related` bodies (RFC 2387) as DICOMweb uses them: parts of `application/dicom`.

/// The `boundary` parameter of a `Content-Type` value, unquoted.
pub fn boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case("boundary")
            .then(|| v.trim().trim_matches('"').to_string())
            .filter(|b| !b.is_empty() && b.len() <= 70)
    })
}

/// The bodies of the parts of a multipart body; `None` when it is malformed.
pub fn split<'a>(body: &'a [u8], boundary: &str) -> Option<Vec<&'a [u8]>> {
    let delimiter = format!("--{boundary}").into_bytes();
    let mut parts = Vec::new();
    let mut at = find(body, &delimiter, 0)? + delimiter.len();
    loop {
        // After a delimiter: `--` closes the body, else CRLF and the part's headers.
        if body.get(at..at + 2) == Some(b"--") {
            return Some(parts);
        }
        let headers_end = find(body, b"\r\n\r\n", at)? + 4;
        let next = find(body, &delimiter, headers_end)?;
        // The CRLF before the next delimiter belongs to it.
        let end = next.checked_sub(2).filter(|&e| e >= headers_end)?;
        if &body[end..next] != b"\r\n" {
            return None;
        }
        parts.push(&body[headers_end..end]);
        at = next + delimiter.len();
    }
}

/// A multipart body of `application/dicom` parts and its `Content-Type` value.
pub fn dicom_body(instances: &[Vec<u8>]) -> (Vec<u8>, String) {
    let boundary = format!("osteoserve-{:032x}", rand::random::<u128>());
    let mut body = Vec::with_capacity(instances.iter().map(|i| i.len() + 128).sum());
    for instance in instances {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(instance);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let content_type =
        format!("multipart/related; type=\"application/dicom\"; boundary={boundary}");
    (body, content_type)
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    haystack
        .get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back() {
        let instances = vec![b"DICM one".to_vec(), Vec::new(), b"two\r\n--x".to_vec()];
        let (body, content_type) = dicom_body(&instances);
        let b = boundary(&content_type).expect("boundary");
        let parts = split(&body, &b).expect("parts");
        assert_eq!(
            parts,
            instances.iter().map(Vec::as_slice).collect::<Vec<_>>()
        );
    }

    #[test]
    fn malformed_bodies_are_none() {
        assert_eq!(
            boundary("multipart/related; type=\"application/dicom\""),
            None
        );
        assert_eq!(boundary("multipart/related; boundary=\"\""), None);
        assert!(split(b"no delimiter at all", "b").is_none());
        // A part that never ends, and one without headers.
        assert!(split(b"--b\r\nContent-Type: x\r\n\r\nbody", "b").is_none());
        assert!(split(b"--b\r\nbody\r\n--b--", "b").is_none());
        assert_eq!(split(b"--b--\r\n", "b"), Some(Vec::new()));
    }
}
