"""spantrack view: exported spans (the demo's spans.jsonl or OTLP JSON) as a self-contained
HTML trace view, Chrome trace-event JSON (Perfetto, speedscope) and OTLP JSON."""
