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

fn attributes_json(kvs: &[opentelemetry::KeyValue], o: &mut String) {
    o.push('{');
    for (i, kv) in kvs.iter().enumerate() {
        if i > 0 {
            o.push(',');
        }
        json_str(kv.key.as_str(), o);
        o.push(':');
        json_value(&kv.value, o);
    }
    o.push('}');
}

/// The JSON line of one span: its fields, attributes, and (when it has any) its events
/// (`name`, `time_ns`, `attributes`) and links (`trace_id`, `span_id`, `attributes`).
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
    o.push_str(",\"attributes\":");
    attributes_json(&s.attributes, &mut o);
    if !s.events.is_empty() {
        o.push_str(",\"events\":[");
        for (i, e) in s.events.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            o.push_str("{\"name\":");
            json_str(&e.name, &mut o);
            o.push_str(&format!(",\"time_ns\":{},\"attributes\":", ns(e.timestamp)));
            attributes_json(&e.attributes, &mut o);
            o.push('}');
        }
        o.push(']');
    }
    if !s.links.is_empty() {
        o.push_str(",\"links\":[");
        for (i, l) in s.links.iter().enumerate() {
            if i > 0 {
                o.push(',');
            }
            o.push_str(&format!(
                "{{\"trace_id\":\"{}\",\"span_id\":\"{}\",\"attributes\":",
                l.span_context.trace_id(),
                l.span_context.span_id()
            ));
            attributes_json(&l.attributes, &mut o);
            o.push('}');
        }
        o.push(']');
    }
    o.push('}');
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

    #[test]
    fn events_and_links_are_in_the_line() {
        use opentelemetry::trace::{
            Event, Link, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
        };
        use opentelemetry::{InstrumentationScope, KeyValue};
        use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
        use std::time::{Duration, UNIX_EPOCH};
        let cx = |t: u8, s: u8| {
            SpanContext::new(
                TraceId::from_bytes([t; 16]),
                SpanId::from_bytes([s; 8]),
                TraceFlags::SAMPLED,
                false,
                TraceState::default(),
            )
        };
        let mut d = SpanData {
            span_context: cx(1, 2),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: "s".into(),
            start_time: UNIX_EPOCH,
            end_time: UNIX_EPOCH + Duration::from_nanos(10),
            attributes: vec![KeyValue::new("a", 1)],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: InstrumentationScope::builder("t").build(),
        };
        assert!(span_json(&d).ends_with(r#""attributes":{"a":1}}"#), "{}", span_json(&d));
        d.events.events.push(Event::new(
            "spantrack.wait",
            UNIX_EPOCH + Duration::from_nanos(5),
            vec![KeyValue::new("k", "v")],
            0,
        ));
        d.links.links.push(Link::new(cx(3, 4), vec![KeyValue::new("spantrack.link.kind", "waker")], 0));
        let line = span_json(&d);
        assert!(
            line.ends_with(
                r#""attributes":{"a":1},"events":[{"name":"spantrack.wait","time_ns":5,"attributes":{"k":"v"}}],"links":[{"trace_id":"03030303030303030303030303030303","span_id":"0404040404040404","attributes":{"spantrack.link.kind":"waker"}}]}"#
            ),
            "{line}"
        );
    }
}
