#!/usr/bin/env python3
"""Summary table (README "On several vCPUs") of scripts/bench-scale-ab.sh output: python3 scripts/bench-scale-ab.py scale-ab.jsonl"""
import json, sys, statistics as st
rows=[json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
by={}
for r in rows:
    if not r.get('result'): continue
    by.setdefault((r['result']['threads'], r['ko']), []).append(r['result'])
ts=sorted({k[0] for k in by})
med=lambda xs: st.median(xs)
one={ko: med([x['calls_per_s'] for x in by.get((1,ko),[])]) for ko in ('plain','A','B') if by.get((1,ko))}
print("| threads | off: calls/s | global lock (A): calls/s | hot path (B): calls/s | A/off | B/off | A scaling vs 1 thread | B scaling vs 1 thread | A call p50/p99 ns | B call p50/p99 ns | A span p99 us | B span p99 us | spread B |")
print("|"+"---|"*13)
for t in ts:
    g={ko: by.get((t,ko),[]) for ko in ('plain','A','B')}
    m={ko: med([x['calls_per_s'] for x in g[ko]]) if g[ko] else float('nan') for ko in g}
    def pp(ko):
        if not g[ko]: return '-'
        return f"{med([x['call_p50_ns'] for x in g[ko]]):.0f} / {med([x['call_p99_ns'] for x in g[ko]]):.0f}"
    def sp(ko):
        if not g[ko]: return '-'
        return f"{med([x['span_p99_ns'] for x in g[ko]])/1000:.1f}"
    spread=(max(x['calls_per_s'] for x in g['B'])-min(x['calls_per_s'] for x in g['B']))/m['B']*100 if g['B'] else 0
    print(f"| {t} | {m['plain']:,.0f} | {m['A']:,.0f} | {m['B']:,.0f} | {m['A']/m['plain']:.2f} | {m['B']/m['plain']:.2f} | {m['A']/one['A']:.2f}x | {m['B']/one['B']:.2f}x | {pp('A')} | {pp('B')} | {sp('A')} | {sp('B')} | {spread:.0f}% |")
