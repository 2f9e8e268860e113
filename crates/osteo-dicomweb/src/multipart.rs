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

/// The most bytes a part's headers (or the preamble) may take.
const MAX_HEADERS: usize = 16 << 10;

/// Where a [`Splitter`] is in the body.
#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    /// Before the first delimiter.
    Preamble,
    /// Just after a delimiter: `--` closes the body, else the part's headers follow.
    AfterDelimiter,
    /// In a part's content, which ends at CRLF and the next delimiter.
    Content,
    /// After the closing delimiter.
    Done,
}

/// Splits a multipart body into its parts' contents as the body arrives: each part's bytes go
/// into a buffer of its own as they come (sized like the part before, as a series' instances
/// are alike) and the part is handed out as soon as its end is seen, so the body is held about
/// once and never whole in one buffer.
#[derive(Debug)]
pub struct Splitter {
    delimiter: Vec<u8>,
    /// CRLF and the delimiter: the end of a part's content.
    closing: Vec<u8>,
    /// Bytes received and not yet placed: at most a header block, or the tail of a part's
    /// content that may be the start of `closing`.
    buf: bytes::BytesMut,
    state: State,
    /// The content of the part being received.
    part: Vec<u8>,
    /// The length of the last part (the next part's first guess).
    last_len: usize,
}

impl Splitter {
    /// A splitter for parts separated by `boundary`.
    pub fn new(boundary: &str) -> Self {
        let delimiter = format!("--{boundary}").into_bytes();
        let closing = [b"\r\n".as_slice(), &delimiter].concat();
        Self {
            delimiter,
            closing,
            buf: bytes::BytesMut::new(),
            state: State::Preamble,
            part: Vec::new(),
            last_len: 0,
        }
    }

    /// Takes the next bytes of the body; returns the parts they completed, `None` when the
    /// body is malformed.
    pub fn push(&mut self, data: &[u8]) -> Option<Vec<bytes::Bytes>> {
        use bytes::Buf;
        self.buf.extend_from_slice(data);
        let mut parts = Vec::new();
        loop {
            match self.state {
                State::Preamble => match find(&self.buf, &self.delimiter, 0) {
                    Some(i) => {
                        self.buf.advance(i + self.delimiter.len());
                        self.state = State::AfterDelimiter;
                    }
                    None if self.buf.len() > MAX_HEADERS => return None,
                    None => return Some(parts),
                },
                State::AfterDelimiter => {
                    if self.buf.len() < 2 {
                        return Some(parts);
                    }
                    if &self.buf[..2] == b"--" {
                        self.state = State::Done;
                        continue;
                    }
                    match find(&self.buf, b"\r\n\r\n", 0) {
                        Some(i) => {
                            self.buf.advance(i + 4);
                            self.state = State::Content;
                            self.part = Vec::with_capacity(self.last_len);
                        }
                        None if self.buf.len() > MAX_HEADERS => return None,
                        None => return Some(parts),
                    }
                }
                State::Content => match find(&self.buf, &self.closing, 0) {
                    Some(i) => {
                        self.part.extend_from_slice(&self.buf[..i]);
                        self.buf.advance(i + self.closing.len());
                        let mut part = std::mem::take(&mut self.part);
                        // A part smaller than the guess gives the rest back: a body of one
                        // large part and many tiny ones holds no large blocks for the tiny.
                        part.shrink_to_fit();
                        self.last_len = part.len();
                        parts.push(bytes::Bytes::from(part));
                        self.state = State::AfterDelimiter;
                    }
                    None => {
                        // Everything but a tail that may start `closing` is content.
                        let placed = (self.buf.len() + 1).saturating_sub(self.closing.len());
                        self.part.extend_from_slice(&self.buf[..placed]);
                        self.buf.advance(placed);
                        return Some(parts);
                    }
                },
                State::Done => {
                    // The epilogue is ignored.
                    self.buf.clear();
                    return Some(parts);
                }
            }
        }
    }

    /// Whether the body ended properly (with its closing delimiter).
    pub fn finished(&self) -> bool {
        self.state == State::Done
    }
}

/// The contents of the parts of a whole multipart body; `None` when it is malformed.
pub fn split(body: &[u8], boundary: &str) -> Option<Vec<bytes::Bytes>> {
    let mut splitter = Splitter::new(boundary);
    let parts = splitter.push(body)?;
    splitter.finished().then_some(parts)
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
        assert_eq!(parts, instances);
        // Byte by byte, as a slow connection delivers it: the same parts.
        let mut splitter = Splitter::new(&b);
        let mut streamed = Vec::new();
        for byte in &body {
            streamed.extend(
                splitter
                    .push(std::slice::from_ref(byte))
                    .expect("well formed"),
            );
        }
        assert!(splitter.finished());
        assert_eq!(streamed, instances);
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
        // A large part followed by tiny ones (each shrunk to its own bytes) splits alike.
        let mut splitter = Splitter::new("b");
        let mut body = b"--b\r\n\r\n".to_vec();
        body.extend(vec![7u8; 1 << 20]);
        body.extend(b"\r\n--b\r\n\r\nx\r\n--b\r\n\r\ny\r\n--b--".as_slice());
        let parts = splitter.push(&body).expect("well formed");
        assert_eq!(parts.len(), 3);
        assert!(splitter.finished());
        assert_eq!(
            (parts[1].as_ref(), parts[2].as_ref()),
            (&b"x"[..], &b"y"[..])
        );
        // Endless headers or preamble are refused, not buffered.
        let mut endless = Splitter::new("b");
        assert!(endless.push(&vec![b'x'; MAX_HEADERS + 1]).is_none());
    }
}
