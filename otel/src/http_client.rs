//! A minimal blocking HTTP/1.1 client for `opentelemetry-otlp`'s HTTP exporter, over
//! `std::net::TcpStream`: no async runtime (the batch processor's thread drives the future),
//! no TLS, one connection per request (`Connection: close`). Enough for a local collector or
//! receiver; used by the demo service and the overhead benchmark (feature `http-client`).

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};

/// Plain-HTTP client for the OTLP exporter: one connection per request, `Connection: close`.
#[derive(Debug)]
pub struct StdHttpClient {
    pub timeout: Duration,
}

fn err(msg: impl Into<String>) -> HttpError {
    msg.into().into()
}

impl StdHttpClient {
    fn send(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let uri = request.uri().clone();
        if uri.scheme_str() != Some("http") {
            return Err(err(format!("{uri}: only http:// endpoints are supported")));
        }
        let host = uri.host().ok_or_else(|| err(format!("{uri}: no host")))?;
        let port = uri.port_u16().unwrap_or(80);
        let addr = (host, port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| err(format!("{host}: no address")))?;
        let mut stream = TcpStream::connect_timeout(&addr, self.timeout)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let body = request.body();
        let mut head = format!(
            "{} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\nContent-Length: {}\r\n",
            request.method(),
            body.len()
        );
        for (k, v) in request.headers() {
            if k == http::header::CONTENT_LENGTH || k == http::header::HOST || k == http::header::CONNECTION {
                continue;
            }
            head.push_str(&format!("{}: {}\r\n", k, v.to_str().unwrap_or("")));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw)?;
        parse_response(&raw)
    }
}

/// Parses a whole HTTP/1.1 response (the server closed the connection after it).
pub fn parse_response(raw: &[u8]) -> Result<Response<Bytes>, HttpError> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| err("truncated HTTP response"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| err("bad HTTP response head"))?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| err("bad HTTP status line"))?;
    let mut builder = Response::builder().status(status);
    let mut chunked = false;
    let mut length = None;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
            if k.eq_ignore_ascii_case("content-length") {
                length = v.parse::<usize>().ok();
            }
            builder = builder.header(k, v);
        }
    }
    let mut body = &raw[end + 4..];
    let body = if chunked {
        let mut out = Vec::new();
        loop {
            let nl = body.windows(2).position(|w| w == b"\r\n").ok_or_else(|| err("bad chunk"))?;
            let size_text = std::str::from_utf8(&body[..nl]).map_err(|_| err("bad chunk size"))?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| err("bad chunk size"))?;
            body = &body[nl + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(body.get(..size).ok_or_else(|| err("short chunk"))?);
            body = body.get(size + 2..).unwrap_or(&[]);
        }
        out
    } else {
        match length {
            Some(n) => body.get(..n).unwrap_or(body).to_vec(),
            None => body.to_vec(),
        }
    };
    Ok(builder.body(Bytes::from(body))?)
}

#[async_trait::async_trait]
impl HttpClient for StdHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        // The batch processor's thread polls this future with a blocking executor: plain
        // blocking I/O is what it expects.
        self.send(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_parse() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX: y\r\n\r\nabcdef").unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.body().as_ref(), b"abc");
        let r = parse_response(b"HTTP/1.0 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").unwrap();
        assert_eq!(r.status(), 400);
        assert_eq!(r.body().as_ref(), b"abcde");
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }
}
