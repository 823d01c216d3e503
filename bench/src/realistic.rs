//! The realistic currency service (issue 16, item 3): the same RPC loop and server span as the
//! tiny converter of `service.rs`, but each request does the work a real service does.
//!
//! Request, one JSON line (the OpenTelemetry demo's `CurrencyConversionRequest`, plus a user
//! and a request id):
//! `{"request_id":7,"user_id":"user-0042","from":{"currency_code":"USD","units":123,"nanos":450000000},"to_code":"JPY"}`
//!
//! Per request, inside the span:
//! 1. parse the JSON (serde_json, into typed structs);
//! 2. SQLite, a real database file (`--db`, the guest's tmpfs in `make bench`; WAL journal,
//!    `synchronous=NORMAL`, the usual production setting): the two currencies' rates
//!    (one indexed query each), the user's last 100 conversions (an index range scan); then
//!    one transaction (`BEGIN IMMEDIATE` .. `COMMIT`: a WAL append, WAL checkpoints every
//!    1,000 pages as SQLite does by default) that reads the user's daily total, updates it
//!    (an upsert) and inserts the conversion's log row (with its index);
//! 3. computation: the conversion in integer nano-units with banker's rounding, a fee
//!    schedule, the user's statistics over their last 50 conversions (mean, deviation, a
//!    velocity score), their last 100 grouped by currency, and a quote of the
//!    amount in every currency of the table (the demo's frontend shows such a list);
//! 4. render the JSON response (serde_json) and write it.
//!
//! The database starts fresh in every run (the file is removed first), with the rates table
//! and `PRELOAD_ROWS` history rows for `USERS` users, so that every configuration sees the
//! same database.

use std::sync::Mutex;

use rusqlite::{params, Connection};
use serde::{Deserialize, Serialize};

use crate::die;

/// Rates against EUR (the tiny converter's table, with a few more currencies).
pub const RATES: &[(&str, f64)] = &[
    ("EUR", 1.0),
    ("USD", 1.1305),
    ("JPY", 126.40),
    ("GBP", 0.85970),
    ("CHF", 1.1360),
    ("CAD", 1.5128),
    ("AUD", 1.6372),
    ("SEK", 10.5375),
    ("NOK", 9.7418),
    ("PLN", 4.3090),
    ("CZK", 25.590),
    ("INR", 79.0325),
    ("BRL", 4.3442),
    ("MXN", 21.4900),
    ("ZAR", 16.3210),
    ("SGD", 1.5281),
    ("HKD", 8.8719),
    ("KRW", 1308.62),
    ("TRY", 6.5015),
    ("DKK", 7.4680),
];

/// Users of the client's requests and of the preloaded history.
pub const USERS: usize = 500;
const PRELOAD_ROWS: usize = 20_000;

#[derive(Deserialize, Serialize, Clone, Debug)]
pub struct Money {
    pub currency_code: String,
    pub units: i64,
    pub nanos: i32,
}

#[derive(Deserialize, Serialize, Debug)]
pub struct Request {
    pub request_id: u64,
    pub user_id: String,
    pub from: Money,
    pub to_code: String,
}

#[derive(Serialize)]
struct Fee {
    schedule: &'static str,
    basis_points: u32,
    amount: Money,
}

#[derive(Serialize)]
struct History {
    count: usize,
    mean_eur: f64,
    stddev_eur: f64,
    max_eur: f64,
    velocity_score: f64,
}

#[derive(Serialize)]
struct Spent {
    currency_code: String,
    count: i64,
    total_eur: f64,
}

#[derive(Serialize)]
struct Quote {
    currency_code: &'static str,
    amount: String,
}

#[derive(Serialize)]
struct Response<'a> {
    request_id: u64,
    user_id: &'a str,
    result: Money,
    rate: f64,
    rate_updated_at: i64,
    fee: Fee,
    net: Money,
    history: History,
    spent_by_currency: Vec<Spent>,
    flagged: bool,
    quotes: Vec<Quote>,
    conversion_id: i64,
}

pub struct Db {
    conn: Connection,
    seq: i64,
}

fn sql<T>(r: rusqlite::Result<T>, what: &str) -> T {
    r.unwrap_or_else(|e| die(&format!("sqlite ({what}): {e}")))
}

/// Creates the database at `path` (removing an old one and its WAL files) and fills it.
pub fn open(path: &str) -> Mutex<Db> {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(format!("{path}{suffix}"));
    }
    let conn = sql(Connection::open(path), "open");
    sql(
        conn.execute_batch(
            "PRAGMA journal_mode=WAL;
             PRAGMA synchronous=NORMAL;
             CREATE TABLE rates (code TEXT PRIMARY KEY, per_eur REAL NOT NULL, updated_at INTEGER NOT NULL);
             CREATE TABLE conversions (
                 id INTEGER PRIMARY KEY,
                 user_id TEXT NOT NULL,
                 from_code TEXT NOT NULL,
                 to_code TEXT NOT NULL,
                 amount_in_nanos INTEGER NOT NULL,
                 amount_out_nanos INTEGER NOT NULL,
                 amount_eur REAL NOT NULL,
                 fee_nanos INTEGER NOT NULL,
                 flagged INTEGER NOT NULL,
                 created_at INTEGER NOT NULL);
             CREATE INDEX conversions_user ON conversions(user_id, id);
             CREATE TABLE user_daily (
                 user_id TEXT NOT NULL,
                 day INTEGER NOT NULL,
                 count INTEGER NOT NULL,
                 total_eur REAL NOT NULL,
                 PRIMARY KEY (user_id, day));",
        ),
        "schema",
    );
    {
        let tx = sql(conn.unchecked_transaction(), "begin");
        for (i, (code, r)) in RATES.iter().enumerate() {
            sql(
                tx.execute(
                    "INSERT INTO rates VALUES (?1, ?2, ?3)",
                    params![code, r, 1_700_000_000 + i as i64],
                ),
                "rates",
            );
        }
        let mut x = 0x2545_f491_4f6c_dd1du64;
        for i in 0..PRELOAD_ROWS {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let (a, b) = (RATES[(x % 20) as usize].0, RATES[((x >> 8) % 20) as usize].0);
            let eur = (x >> 20) % 500_000;
            sql(
                tx.execute(
                    "INSERT INTO conversions (user_id, from_code, to_code, amount_in_nanos, amount_out_nanos, amount_eur, fee_nanos, flagged, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, 0, ?7)",
                    params![user_name((x >> 32) as usize % USERS), a, b, eur as i64 * 10_000_000, eur as i64 * 10_000_000, eur as f64 / 100.0, i as i64],
                ),
                "history",
            );
        }
        sql(tx.commit(), "commit");
    }
    Mutex::new(Db { conn, seq: 0 })
}

pub fn user_name(i: usize) -> String {
    format!("user-{i:04}")
}

const NANO: i128 = 1_000_000_000;

fn to_nanos(m: &Money) -> i128 {
    m.units as i128 * NANO + m.nanos as i128
}

fn from_nanos(code: &str, v: i128) -> Money {
    Money {
        currency_code: code.to_string(),
        units: (v / NANO) as i64,
        nanos: (v % NANO) as i32,
    }
}

/// Round half to even to `digits` decimals (of nano-units).
fn round_nanos(v: i128, digits: u32) -> i128 {
    let q = 10i128.pow(9 - digits);
    let (d, r) = (v.div_euclid(q), v.rem_euclid(q));
    let up = match (2 * r).cmp(&q) {
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Equal => d % 2 != 0,
    };
    (d + i128::from(up)) * q
}

fn minor_digits(code: &str) -> u32 {
    match code {
        "JPY" | "KRW" => 0,
        _ => 2,
    }
}

/// Formats nano-units with the currency's minor digits and thousands separators.
fn format_amount(code: &str, v: i128) -> String {
    let d = minor_digits(code);
    let v = round_nanos(v, d);
    let units = (v / NANO).unsigned_abs();
    let digits = units.to_string();
    let mut s = String::with_capacity(digits.len() + 8);
    if v < 0 {
        s.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            s.push(',');
        }
        s.push(c);
    }
    if d > 0 {
        let frac = (v % NANO).unsigned_abs() / 10u128.pow(9 - d);
        s.push('.');
        s.push_str(&format!("{frac:0width$}", width = d as usize));
    }
    s.push(' ');
    s.push_str(code);
    s
}

/// What a request's handling reports back for the span's attributes.
pub struct Outcome {
    pub ok: bool,
    pub amount_nanos: i64,
    pub flagged: bool,
}

/// Handles one JSON request line; appends the JSON response line to `reply`.
pub fn handle(db: &Mutex<Db>, line: &str, reply: &mut String) -> Outcome {
    let req: Request = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => {
            reply.push_str(&format!("{{\"error\":\"bad request: {e}\"}}\n"));
            return Outcome { ok: false, amount_nanos: 0, flagged: false };
        }
    };
    let mut db = db.lock().unwrap_or_else(|e| e.into_inner());
    db.seq += 1;
    let seq = db.seq;
    let conn = &db.conn;
    let rate_of = |code: &str| -> Option<(f64, i64)> {
        let mut st = sql(
            conn.prepare_cached("SELECT per_eur, updated_at FROM rates WHERE code = ?1"),
            "prepare rate",
        );
        st.query_row([code], |r| Ok((r.get(0)?, r.get(1)?))).ok()
    };
    let (Some((ra, _)), Some((rb, updated))) = (rate_of(&req.from.currency_code), rate_of(&req.to_code)) else {
        reply.push_str("{\"error\":\"unknown currency\"}\n");
        return Outcome { ok: false, amount_nanos: 0, flagged: false };
    };
    // The user's recent conversions (target currency, amount in EUR), newest first.
    let recent: Vec<(String, f64)> = {
        let mut st = sql(
            conn.prepare_cached(
                "SELECT to_code, amount_eur FROM conversions WHERE user_id = ?1 ORDER BY id DESC LIMIT 100",
            ),
            "prepare history",
        );
        let rows = sql(st.query_map([&req.user_id], |r| Ok((r.get(0)?, r.get(1)?))), "history");
        rows.filter_map(Result::ok).collect()
    };
    let hist: Vec<f64> = recent.iter().take(50).map(|(_, x)| *x).collect();
    // Where the user's money went: the recent conversions grouped by target currency,
    // largest total first.
    let mut spent: Vec<Spent> = Vec::new();
    for (code, eur) in &recent {
        match spent.iter_mut().find(|s| &s.currency_code == code) {
            Some(s) => {
                s.count += 1;
                s.total_eur += eur;
            }
            None => spent.push(Spent { currency_code: code.clone(), count: 1, total_eur: *eur }),
        }
    }
    spent.sort_by(|a, b| b.total_eur.total_cmp(&a.total_eur));
    // The conversion, in integer nano-units: through EUR, rates scaled to 1e-9.
    let amount_in = to_nanos(&req.from);
    let ra_n = (ra * 1e9).round() as i128;
    let rb_n = (rb * 1e9).round() as i128;
    let eur_n = amount_in * NANO / ra_n;
    let out_n = round_nanos(eur_n * rb_n / NANO, minor_digits(&req.to_code));
    let amount_eur = eur_n as f64 / 1e9;

    // Fee schedule by size in EUR, and the user's statistics.
    let (schedule, bp) = match amount_eur {
        x if x < 100.0 => ("retail", 150u32),
        x if x < 10_000.0 => ("standard", 80),
        x if x < 250_000.0 => ("volume", 35),
        _ => ("institutional", 12),
    };
    let fee_n = round_nanos(out_n * bp as i128 / 10_000, minor_digits(&req.to_code));
    let count = hist.len();
    let mean = if count > 0 { hist.iter().sum::<f64>() / count as f64 } else { 0.0 };
    let var = if count > 1 {
        hist.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / (count - 1) as f64
    } else {
        0.0
    };
    let sd = var.sqrt();
    let max = hist.iter().cloned().fold(0.0f64, f64::max);
    // Velocity: recent conversions weigh more (exponential decay over the list).
    let velocity: f64 = hist
        .iter()
        .enumerate()
        .map(|(i, x)| x * 0.9f64.powi(i as i32))
        .sum::<f64>()
        / (mean.max(1.0) * 10.0);
    let flagged = count >= 5 && (amount_eur > mean + 3.0 * sd || velocity > 4.0);

    // A quote of the amount in every currency of the table.
    let quotes: Vec<Quote> = RATES
        .iter()
        .map(|(code, r)| {
            let v = eur_n * (r * 1e9).round() as i128 / NANO;
            Quote { currency_code: code, amount: format_amount(code, v) }
        })
        .collect();

    // The write: the user's daily total (an upsert) and the conversion's log row, in one
    // transaction.
    let day = (1_800_000_000 + seq) / 86_400;
    sql(conn.execute_batch("BEGIN IMMEDIATE"), "begin");
    let daily_before: f64 = {
        let mut st = sql(
            conn.prepare_cached("SELECT total_eur FROM user_daily WHERE user_id = ?1 AND day = ?2"),
            "prepare daily",
        );
        st.query_row(params![req.user_id, day], |r| r.get(0)).unwrap_or(0.0)
    };
    {
        let mut st = sql(
            conn.prepare_cached(
                "INSERT INTO user_daily (user_id, day, count, total_eur) VALUES (?1, ?2, 1, ?3)
                 ON CONFLICT (user_id, day) DO UPDATE SET count = count + 1, total_eur = total_eur + excluded.total_eur",
            ),
            "prepare upsert",
        );
        sql(st.execute(params![req.user_id, day, amount_eur]), "upsert");
    }
    let over_daily_limit = daily_before + amount_eur > 1_000_000.0;
    let flagged = flagged || over_daily_limit;
    let conversion_id = {
        let mut st = sql(
            conn.prepare_cached(
                "INSERT INTO conversions (user_id, from_code, to_code, amount_in_nanos, amount_out_nanos, amount_eur, fee_nanos, flagged, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            ),
            "prepare insert",
        );
        sql(
            st.insert(params![
                req.user_id,
                req.from.currency_code,
                req.to_code,
                amount_in as i64,
                out_n as i64,
                amount_eur,
                fee_n as i64,
                flagged,
                1_800_000_000 + seq
            ]),
            "insert",
        )
    };
    sql(conn.execute_batch("COMMIT"), "commit");

    let resp = Response {
        request_id: req.request_id,
        user_id: &req.user_id,
        result: from_nanos(&req.to_code, out_n),
        rate: rb / ra,
        rate_updated_at: updated,
        fee: Fee { schedule, basis_points: bp, amount: from_nanos(&req.to_code, fee_n) },
        net: from_nanos(&req.to_code, out_n - fee_n),
        history: History { count, mean_eur: mean, stddev_eur: sd, max_eur: max, velocity_score: velocity },
        spent_by_currency: spent,
        flagged,
        quotes,
        conversion_id,
    };
    match serde_json::to_string(&resp) {
        Ok(s) => reply.push_str(&s),
        Err(e) => reply.push_str(&format!("{{\"error\":\"render: {e}\"}}")),
    }
    reply.push('\n');
    Outcome { ok: true, amount_nanos: out_n as i64, flagged }
}

/// The client's requests: `n` distinct JSON lines (users, currency pairs and amounts vary).
pub fn requests(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let a = RATES[(i * 7) % RATES.len()].0;
            let b = RATES[(i * 11 + 3) % RATES.len()].0;
            let req = Request {
                request_id: i as u64,
                user_id: user_name((i * 37) % USERS),
                from: Money {
                    currency_code: a.to_string(),
                    units: 10 + (i as i64 * 7_919) % 50_000,
                    nanos: ((i * 123_456_789) % 1_000_000_000) as i32,
                },
                to_code: b.to_string(),
            };
            let mut s = serde_json::to_string(&req).unwrap_or_default();
            s.push('\n');
            s
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converts_logs_and_renders() {
        let path = std::env::temp_dir().join(format!("st-realistic-{}.db", std::process::id()));
        let path = path.to_str().unwrap().to_string();
        let db = open(&path);
        let reqs = requests(3);
        let mut reply = String::new();
        let o = handle(&db, &reqs[0], &mut reply);
        assert!(o.ok, "{reply}");
        let v: serde_json::Value = serde_json::from_str(reply.trim()).unwrap();
        assert_eq!(v["conversion_id"], (PRELOAD_ROWS + 1) as i64);
        assert_eq!(v["quotes"].as_array().unwrap().len(), RATES.len());
        reply.clear();
        assert!(!handle(&db, "{\"oops\":1}", &mut reply).ok);
        assert!(reply.starts_with("{\"error\""));
        for s in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{s}"));
        }
    }

    #[test]
    fn rounding_and_format() {
        assert_eq!(round_nanos(1_005_000_000, 2), 1_000_000_000);
        assert_eq!(round_nanos(1_015_000_000, 2), 1_020_000_000);
        assert_eq!(format_amount("EUR", 1_234_567_890_000), "1,234.57 EUR");
        assert_eq!(format_amount("JPY", 1_500_000_000), "2 JPY");
    }
}
