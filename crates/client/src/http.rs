//! Just enough HTTP/1.1 for one request per connection on a Unix socket:
//! the request line, headers and a `Content-Length` body out; the status
//! line, headers and a body framed by `Content-Length`, chunked transfer
//! coding or the end of the connection in. Every line, the header block,
//! and (for ordinary answers) the body are bounded, so a confused or hostile
//! peer cannot make the client allocate without limit.

use std::io::{self, BufRead, Read, Write};

use thiserror::Error;

/// The longest line accepted (status line, header, chunk size).
pub const MAX_LINE: usize = 8 * 1024;
/// The most header lines accepted in one response.
pub const MAX_HEADERS: usize = 100;
/// The largest ordinary (non-streamed) body accepted.
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// The peer did not speak HTTP/1.1 as this client understands it.
#[derive(Debug, Error)]
pub enum ProtocolError {
    #[error("the status line '{0}' is not HTTP/1.x")]
    StatusLine(String),
    #[error("the header line '{0}' is malformed")]
    Header(String),
    #[error("a line is longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("the body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the Content-Length '{0}' is not valid")]
    ContentLength(String),
    #[error("the chunk size line '{0}' is not valid")]
    ChunkSize(String),
    #[error("a chunk does not end with CRLF")]
    ChunkEnd,
    #[error("the connection closed in the middle of the answer")]
    Truncated,
    #[error("the answer is not UTF-8")]
    NotUtf8,
    #[error("unexpected answer: HTTP {status} {reason}: {body}")]
    Status {
        status: u16,
        reason: String,
        body: String,
    },
    #[error("the answer is not the JSON expected")]
    Json(#[source] serde_json::Error),
}

impl ProtocolError {
    /// Wraps the error in an `io::Error` (for `Read` implementations).
    fn into_io(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }
}

/// Takes a `ProtocolError` back out of an `io::Error` made by `into_io`.
pub fn protocol_error(e: io::Error) -> Result<ProtocolError, io::Error> {
    if e.kind() == io::ErrorKind::InvalidData
        && e.get_ref().is_some_and(|inner| inner.is::<ProtocolError>())
    {
        let inner = e
            .into_inner()
            .expect("checked above that there is an inner error");
        return Ok(*inner
            .downcast::<ProtocolError>()
            .expect("checked above that it is a ProtocolError"));
    }
    Err(e)
}

/// Writes one request. `body` is (content type, bytes). The request asks
/// the server to close the connection after answering.
pub fn write_request(
    w: &mut impl Write,
    method: &str,
    target: &str,
    body: Option<(&str, &[u8])>,
) -> io::Result<()> {
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: vireo/{}\r\nAccept: application/json\r\nConnection: close\r\n",
        env!("CARGO_PKG_VERSION")
    );
    match body {
        Some((content_type, bytes)) => {
            head.push_str(&format!(
                "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
                bytes.len()
            ));
        }
        None if method != "GET" => head.push_str("Content-Length: 0\r\n"),
        None => {}
    }
    head.push_str("\r\n");
    w.write_all(head.as_bytes())?;
    if let Some((_, bytes)) = body {
        w.write_all(bytes)?;
    }
    w.flush()
}

/// Reads one line ending in LF (the CR before it, if any, is removed) of
/// at most `MAX_LINE` bytes. `None` at the end of the input before any
/// byte.
pub fn read_line(r: &mut impl BufRead, max: usize) -> io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            if line.is_empty() {
                return Ok(None);
            }
            return Err(ProtocolError::Truncated.into_io());
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if line.len() + take > max + 2 {
            return Err(ProtocolError::LineTooLong.into_io());
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.len() > max {
                return Err(ProtocolError::LineTooLong.into_io());
            }
            return Ok(Some(line));
        }
    }
}

fn required_line(r: &mut impl BufRead) -> io::Result<String> {
    let line = read_line(r, MAX_LINE)?.ok_or_else(|| ProtocolError::Truncated.into_io())?;
    String::from_utf8(line).map_err(|_| ProtocolError::NotUtf8.into_io())
}

/// Reads the CRLF (or bare LF) that ends a chunk's data.
fn expect_crlf(r: &mut impl BufRead) -> io::Result<()> {
    let mut byte = [0u8; 1];
    for want in [b'\r', b'\n'] {
        if r.read(&mut byte)? == 0 {
            return Err(ProtocolError::Truncated.into_io());
        }
        if byte[0] == b'\n' {
            return Ok(());
        }
        if byte[0] != want {
            return Err(ProtocolError::ChunkEnd.into_io());
        }
    }
    Ok(())
}

/// A response's status line and headers.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub reason: String,
    /// (lower-case name, value).
    pub headers: Vec<(String, String)>,
}

impl Head {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Reads the status line and headers, skipping interim (1xx) answers.
pub fn read_head(r: &mut impl BufRead) -> io::Result<Head> {
    loop {
        let line = required_line(r)?;
        let mut parts = line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default();
        let code = parts.next().unwrap_or_default();
        let reason = parts.next().unwrap_or_default().to_owned();
        if !matches!(version, "HTTP/1.1" | "HTTP/1.0") || code.len() != 3 {
            return Err(ProtocolError::StatusLine(line).into_io());
        }
        let status: u16 = code
            .parse()
            .ok()
            .filter(|s| (100..600).contains(s))
            .ok_or_else(|| ProtocolError::StatusLine(line.clone()).into_io())?;
        let mut headers = Vec::new();
        loop {
            let line = required_line(r)?;
            if line.is_empty() {
                break;
            }
            if headers.len() == MAX_HEADERS {
                return Err(ProtocolError::TooManyHeaders.into_io());
            }
            let Some((name, value)) = line.split_once(':') else {
                return Err(ProtocolError::Header(line).into_io());
            };
            // Folded (obsolete) continuation lines and names with blanks
            // are not HTTP/1.1 any more.
            if name.is_empty() || name.contains([' ', '\t']) {
                return Err(ProtocolError::Header(line).into_io());
            }
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        if (100..200).contains(&status) {
            continue;
        }
        return Ok(Head {
            status,
            reason,
            headers,
        });
    }
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the server closes the connection.
    UntilClose,
}

/// The body framing of a response to a request other than HEAD.
pub fn framing(head: &Head) -> io::Result<Framing> {
    if head.status == 204 || head.status == 304 {
        return Ok(Framing::Empty);
    }
    if let Some(te) = head.header("transfer-encoding") {
        let last = te.rsplit(',').next().unwrap_or_default().trim();
        return Ok(if last.eq_ignore_ascii_case("chunked") {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut length = None;
    for (_, value) in head.headers.iter().filter(|(n, _)| n == "content-length") {
        // "Content-Length: 5, 5" and repeated equal headers are allowed.
        for v in value.split(',') {
            let v = v.trim();
            let n: u64 = v
                .parse()
                .ok()
                .filter(|_| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| ProtocolError::ContentLength(value.clone()).into_io())?;
            if length.is_some_and(|l| l != n) {
                return Err(ProtocolError::ContentLength(value.clone()).into_io());
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

#[derive(Debug)]
enum ChunkState {
    /// Expecting a chunk-size line.
    Size,
    /// Inside a chunk with this much left.
    Data(u64),
    Done,
}

/// A response body, decoded: reads give the payload bytes only.
#[derive(Debug)]
pub struct Body<R> {
    inner: R,
    framing: Framing,
    /// Bytes left for `Length`.
    remaining: u64,
    chunk: ChunkState,
}

impl<R: BufRead> Body<R> {
    pub fn new(inner: R, framing: Framing) -> Self {
        let remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        Self {
            inner,
            framing,
            remaining,
            chunk: ChunkState::Size,
        }
    }

    /// The connection underneath.
    pub fn inner(&self) -> &R {
        &self.inner
    }

    /// Reads the whole body, failing past `limit` bytes.
    pub fn read_all(mut self, limit: usize) -> io::Result<Vec<u8>> {
        if let Framing::Length(n) = self.framing {
            if n > limit as u64 {
                return Err(ProtocolError::BodyTooLarge { limit }.into_io());
            }
        }
        let mut out = Vec::new();
        (&mut self).take(limit as u64 + 1).read_to_end(&mut out)?;
        if out.len() > limit {
            return Err(ProtocolError::BodyTooLarge { limit }.into_io());
        }
        Ok(out)
    }

    fn read_chunked(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.chunk {
                ChunkState::Done => return Ok(0),
                ChunkState::Size => {
                    let line = required_line(&mut self.inner)?;
                    let size_text = line.split(';').next().unwrap_or_default().trim();
                    let size = if size_text.is_empty()
                        || size_text.len() > 15
                        || !size_text.bytes().all(|b| b.is_ascii_hexdigit())
                    {
                        return Err(ProtocolError::ChunkSize(line).into_io());
                    } else {
                        u64::from_str_radix(size_text, 16)
                            .map_err(|_| ProtocolError::ChunkSize(line.clone()).into_io())?
                    };
                    if size == 0 {
                        // Trailers, then the empty line.
                        let mut trailers = 0;
                        while !required_line(&mut self.inner)?.is_empty() {
                            trailers += 1;
                            if trailers > MAX_HEADERS {
                                return Err(ProtocolError::TooManyHeaders.into_io());
                            }
                        }
                        self.chunk = ChunkState::Done;
                    } else {
                        self.chunk = ChunkState::Data(size);
                    }
                }
                ChunkState::Data(left) => {
                    if buf.is_empty() {
                        return Ok(0);
                    }
                    let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = self.inner.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(ProtocolError::Truncated.into_io());
                    }
                    let left = left - n as u64;
                    if left == 0 {
                        expect_crlf(&mut self.inner)?;
                        self.chunk = ChunkState::Size;
                    } else {
                        self.chunk = ChunkState::Data(left);
                    }
                    return Ok(n);
                }
            }
        }
    }
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.framing {
            Framing::Empty => Ok(0),
            Framing::UntilClose => self.inner.read(buf),
            Framing::Length(_) => {
                if self.remaining == 0 || buf.is_empty() {
                    return Ok(0);
                }
                let want = buf
                    .len()
                    .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
                let n = self.inner.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(ProtocolError::Truncated.into_io());
                }
                self.remaining -= n as u64;
                Ok(n)
            }
            Framing::Chunked => self.read_chunked(buf),
        }
    }
}

/// Percent-encodes one path segment (everything but RFC 3986's unreserved
/// characters).
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufReader;

    fn parse(raw: &[u8]) -> io::Result<(Head, Vec<u8>)> {
        let mut r = BufReader::with_capacity(7, raw);
        let head = read_head(&mut r)?;
        let framing = framing(&head)?;
        let body = Body::new(r, framing).read_all(1024)?;
        Ok((head, body))
    }

    fn protocol(e: io::Error) -> ProtocolError {
        protocol_error(e).expect("a protocol error")
    }

    #[test]
    fn requests_carry_their_body_length_and_ask_to_close() {
        let mut out = Vec::new();
        write_request(
            &mut out,
            "POST",
            "/v1/domains",
            Some(("application/xml", b"<domain/>")),
        )
        .expect("writes");
        let text = String::from_utf8(out).expect("ASCII");
        assert!(text.starts_with("POST /v1/domains HTTP/1.1\r\nHost: localhost\r\n"));
        assert!(text.contains("\r\nContent-Type: application/xml\r\nContent-Length: 9\r\n"));
        assert!(text.contains("\r\nConnection: close\r\n"));
        assert!(text.ends_with("\r\n\r\n<domain/>"));

        let mut out = Vec::new();
        write_request(&mut out, "POST", "/v1/domains/a/start", None).expect("writes");
        assert!(String::from_utf8_lossy(&out).contains("Content-Length: 0\r\n"));
        let mut out = Vec::new();
        write_request(&mut out, "GET", "/v1/domains", None).expect("writes");
        assert!(!String::from_utf8_lossy(&out).contains("Content-Length"));
    }

    #[test]
    fn content_length_bodies_are_read_exactly() {
        let (head, body) =
            parse(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello trailing")
                .expect("parses");
        assert_eq!(head.status, 200);
        assert_eq!(head.reason, "OK");
        assert_eq!(head.header("content-type"), Some("text/plain"));
        assert_eq!(body, b"hello");
    }

    #[test]
    fn chunked_bodies_are_decoded_with_extensions_and_trailers() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
            4;ext=1\r\nWiki\r\n5\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let (_, body) = parse(raw).expect("parses");
        assert_eq!(body, b"Wikipedia in\r\n\r\nchunks.");
    }

    #[test]
    fn interim_answers_are_skipped_and_204_has_no_body() {
        let (head, body) =
            parse(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n").expect("parses");
        assert_eq!(head.status, 204);
        assert!(body.is_empty());
    }

    #[test]
    fn bodies_without_framing_last_until_the_connection_closes() {
        let (_, body) = parse(b"HTTP/1.0 200 OK\r\n\r\nall of it").expect("parses");
        assert_eq!(body, b"all of it");
    }

    #[test]
    fn malformed_answers_are_refused_by_what_is_wrong() {
        let cases: &[(&[u8], &str)] = &[
            (b"SSH-2.0-OpenSSH\r\n\r\n", "status line"),
            (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
            (b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n", "header line"),
            (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "header line"),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
                "Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
                "Content-Length",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
                "closed in the middle",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n",
                "CRLF",
            ),
            (
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                "closed in the middle",
            ),
            (
                b"HTTP/1.1 200 OK\r\nContent-Length: 2000\r\n\r\n",
                "larger than 1024",
            ),
            (b"HTTP/1.1 200 OK\r\nContent-Le", "closed in the middle"),
        ];
        for (raw, want) in cases {
            let e = protocol(parse(raw).expect_err("refused"));
            assert!(
                e.to_string().contains(want),
                "{:?}: '{e}' should mention '{want}'",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn endless_lines_headers_and_bodies_are_bounded() {
        let mut raw = b"HTTP/1.1 200 OK\r\nX: ".to_vec();
        raw.extend(std::iter::repeat_n(b'a', MAX_LINE + 10));
        raw.extend_from_slice(b"\r\n\r\n");
        assert!(matches!(
            protocol(parse(&raw).expect_err("refused")),
            ProtocolError::LineTooLong
        ));

        let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            raw.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        raw.extend_from_slice(b"\r\n");
        assert!(matches!(
            protocol(parse(&raw).expect_err("refused")),
            ProtocolError::TooManyHeaders
        ));

        // A chunked body without a length still stops at the limit.
        let mut raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..100 {
            raw.extend_from_slice(b"20\r\n");
            raw.extend(std::iter::repeat_n(b'x', 32));
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"0\r\n\r\n");
        assert!(matches!(
            protocol(parse(&raw).expect_err("refused")),
            ProtocolError::BodyTooLarge { limit: 1024 }
        ));
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(encode_segment("vm-1_a.b~"), "vm-1_a.b~");
        assert_eq!(encode_segment("a b/c?d%"), "a%20b%2Fc%3Fd%25");
        assert_eq!(encode_segment("é"), "%C3%A9");
    }
}
