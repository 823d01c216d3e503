//! Where the demo service's spans go: OTLP/HTTP protobuf through
//! `spantrack_otel::http_client::StdHttpClient`, or one JSON line per span on stdout (for
//! tests without a receiver).

use std::io::Write;

use opentelemetry::{Array, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// One JSON object per span on stdout.
#[derive(Debug, Default)]
pub struct JsonLinesExporter;

fn json_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn json_value(v: &Value, out: &mut String) {
    match v {
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::I64(i) => out.push_str(&i.to_string()),
        Value::F64(f) if f.is_finite() => out.push_str(&f.to_string()),
        Value::String(s) => json_str(s.as_str(), out),
        Value::Array(Array::String(v)) => {
            out.push('[');
            for (i, s) in v.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                json_str(s.as_str(), out);
            }
            out.push(']');
        }
        other => json_str(&other.to_string(), out),
    }
}

fn ns(t: std::time::SystemTime) -> u128 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

/// The JSON line of one span.
pub fn span_json(s: &SpanData) -> String {
    let mut o = String::with_capacity(256);
    o.push_str("{\"name\":");
    json_str(&s.name, &mut o);
    o.push_str(&format!(
        ",\"trace_id\":\"{}\",\"span_id\":\"{}\",\"parent_span_id\":\"{}\",\"kind\":\"{:?}\",\"start_ns\":{},\"end_ns\":{},\"status\":",
        s.span_context.trace_id(),
        s.span_context.span_id(),
        s.parent_span_id,
        s.span_kind,
        ns(s.start_time),
        ns(s.end_time)
    ));
    match &s.status {
        opentelemetry::trace::Status::Unset => o.push_str("\"unset\""),
        opentelemetry::trace::Status::Ok => o.push_str("\"ok\""),
        opentelemetry::trace::Status::Error { description } => {
            json_str(&format!("error: {description}"), &mut o)
        }
    }
    o.push_str(",\"attributes\":{");
    for (i, kv) in s.attributes.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        json_str(kv.key.as_str(), &mut o);
        o.push(':');
        json_value(&kv.value, &mut o);
    }
    o.push_str("}}");
    o
}

impl SpanExporter for JsonLinesExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut text = String::new();
        for s in &batch {
            text.push_str(&span_json(s));
            text.push('\n');
        }
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes() {
        let mut s = String::new();
        json_str("a\"b\\c\n\u{1}", &mut s);
        assert_eq!(s, r#""a\"b\\c\n\u0001""#);
    }
}
