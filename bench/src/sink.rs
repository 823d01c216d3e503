//! The OTLP/HTTP sink (stands for the collector / Jaeger): reads each request whole, answers
//! `200 OK` with an empty body (a full success in OTLP/HTTP), counts requests and bytes
//! (printed on stderr whenever the count is a power of two). The service counts the spans
//! it exported itself.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;

use crate::{die, write_file, Opts};

pub fn run(opts: &Opts) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| die(&format!("bind: {e}")));
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| die(&format!("{e}")));
    write_file(opts.req("port-file"), &format!("{port}\n"));
    let (mut requests, mut bytes) = (0u64, 0u64);
    for s in listener.incoming() {
        let Ok(s) = s else { continue };
        let Ok(mut w) = s.try_clone() else { continue };
        let mut r = BufReader::new(s);
        let mut len = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" || line == "\n" {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                if k.trim().eq_ignore_ascii_case("content-length") {
                    len = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; len];
        if r.read_exact(&mut body).is_err() {
            continue;
        }
        requests += 1;
        bytes += len as u64;
        let _ = w.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        if requests.is_power_of_two() {
            eprintln!("sink: {requests} exports, {bytes} bytes");
        }
    }
}
