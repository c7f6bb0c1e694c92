//! The rows an incremental read takes again, and which of them the target already has.
//!
//! An incremental read starts `lookback_minutes` before its watermark, so the rows the last
//! run wrote near the watermark come back on every run: a fleet in which nothing changed still
//! loads and merges a few rows per tenant and table, one BigQuery job pair per table per run.
//! A successful run therefore stores, with its watermark, a digest of each row in the next
//! read's window ([`WindowRows`]); the next read leaves out a row whose digest is among them.
//! A full sync stores them too (up to [`FULL_READ_DIGESTS`] rows digested), so the first
//! incremental run after it sends only what changed.
//!
//! Why leaving such a row out loses nothing:
//! - a digest is stored only for a row the target committed in the run that stores it; a
//!   failed run drops the digests (`TableState::failed`), and so does every write that could
//!   change rows they vouch for, before it happens (a commit of the tenant's rows,
//!   `runner::record::forget_window_rows`; `verify --repair`), so every stored digest is a row
//!   the target holds as it is;
//! - a row is left out only when every value, the cursor included, is what was committed, and
//!   the target table's shape is the same (it is part of every digest);
//! - any subset of the digests is enough: a row missing from them is only sent again;
//! - only tables merged by key take part: a table without a key tells a row's copies apart by
//!   counting them over the whole window it is sent, so its window is always sent whole.
//!
//! The digest is SipHash-1-3 (128 bits) under a random key kept beside the digests, so two
//! different rows share one with a chance of 2^-128, and nobody without the state can make
//! them collide.

use std::collections::HashSet;
use std::hash::Hasher;
use std::sync::Arc;

use chrono::{NaiveDateTime, TimeDelta};
use serde::{Deserialize, Serialize};
use siphasher::sip128::{Hasher128, SipHasher13};

use crate::error::ConnectorError;
use crate::schema::TableRef;
use crate::state::StateStore;
use crate::strategy::{lookback, lookback_days};
use crate::value::Value;

/// At most this many digests per tenant's table: a window holding more rows is a table that
/// changes anyway, and its state entry stays small (32 hex digits a row).
pub const MAX_WINDOW_ROWS: usize = 256;

/// The digests of the rows a table's next incremental read will take again, stored with its
/// watermark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowRows {
    /// The digest key, 32 hex digits.
    pub key: String,
    /// The digests, 32 hex digits each, concatenated in ascending order.
    pub digests: String,
}

impl WindowRows {
    fn parse_key(&self) -> Option<(u64, u64)> {
        let k = u128::from_str_radix(&self.key, 16).ok().filter(|_| self.key.len() == 32)?;
        Some(((k >> 64) as u64, k as u64))
    }

    fn parse_digests(&self) -> Option<HashSet<u128>> {
        if !self.digests.len().is_multiple_of(32) || !self.digests.is_ascii() {
            return None;
        }
        (0..self.digests.len() / 32)
            .map(|i| u128::from_str_radix(&self.digests[i * 32..(i + 1) * 32], 16).ok())
            .collect()
    }

    /// How many rows this holds.
    pub fn len(&self) -> usize {
        self.digests.len() / 32
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }
}

/// One target's stored digests: their key and the digests.
type Held = ((u64, u64), HashSet<u128>);

/// What a read needs to leave out the rows its targets have: the digests every target holds,
/// and how to digest and collect the rows for the next run. Shared by a read's attempts.
#[derive(Debug, Clone)]
pub struct WindowCheck {
    key: (u64, u64),
    /// The target table's shape, digested once: part of every row's digest.
    shape: u128,
    /// Rows every target holds as they are.
    synced: HashSet<u128>,
    lookback: TimeDelta,
}

impl WindowCheck {
    /// The check for one read. `priors` are the targets' stored digests (`None` for a target
    /// without them): rows are left out only when every target holds them under one key; the
    /// digests for the next run are taken under that key, or a new one. `shape` is anything
    /// that tells the target table's layout (columns, names, types).
    pub fn new(priors: &[Option<&WindowRows>], shape: &str, lookback_minutes: u64) -> Arc<Self> {
        let parsed: Option<Vec<Held>> =
            priors.iter().map(|p| p.and_then(|w| Some((w.parse_key()?, w.parse_digests()?)))).collect();
        let (key, synced) = match parsed {
            Some(sets) if !sets.is_empty() && sets.iter().all(|(k, _)| *k == sets[0].0) => {
                let key = sets[0].0;
                let mut sets = sets.into_iter().map(|(_, s)| s);
                let first = sets.next().unwrap_or_default();
                (key, sets.fold(first, |acc, s| acc.intersection(&s).copied().collect()))
            }
            _ => ((rand::random(), rand::random()), HashSet::new()),
        };
        let mut h = SipHasher13::new_with_keys(key.0, key.1);
        h.write(shape.as_bytes());
        Arc::new(Self { key, shape: h.finish128().as_u128(), synced, lookback: lookback(lookback_minutes) })
    }

    /// The digest of one row: the target table's shape, then every value with its kind.
    pub fn digest(&self, row: &[Value]) -> u128 {
        let mut h = SipHasher13::new_with_keys(self.key.0, self.key.1);
        h.write_u128(self.shape);
        h.write_usize(row.len());
        for v in row {
            digest_value(&mut h, v);
        }
        h.finish128().as_u128()
    }

    /// How many rows every target holds.
    #[cfg(test)]
    fn synced_rows(&self) -> usize {
        self.synced.len()
    }
}

fn digest_value(h: &mut SipHasher13, v: &Value) {
    let text = |h: &mut SipHasher13, tag: u8, s: &[u8]| {
        h.write_u8(tag);
        h.write_usize(s.len());
        h.write(s);
    };
    match v {
        Value::Null => h.write_u8(0),
        Value::Bool(b) => {
            h.write_u8(1);
            h.write_u8(u8::from(*b));
        }
        Value::Int(i) => {
            h.write_u8(2);
            h.write_i64(*i);
        }
        Value::UInt(u) => {
            h.write_u8(3);
            h.write_u64(*u);
        }
        Value::Float(f) => {
            h.write_u8(4);
            h.write_u64(f.to_bits());
        }
        Value::Decimal(s) => text(h, 5, s.as_bytes()),
        Value::String(s) => text(h, 6, s.as_bytes()),
        Value::Bytes(b) => text(h, 7, b),
        Value::Date(d) => {
            h.write_u8(8);
            h.write_i32(chrono::Datelike::num_days_from_ce(d));
        }
        Value::DateTime(t) => {
            h.write_u8(9);
            h.write_i64(t.and_utc().timestamp());
            h.write_u32(t.and_utc().timestamp_subsec_nanos());
        }
        Value::Timestamp(t) => {
            h.write_u8(10);
            h.write_i64(t.timestamp());
            h.write_u32(t.timestamp_subsec_nanos());
        }
        Value::Time(us) => {
            h.write_u8(11);
            h.write_i64(*us);
        }
        Value::Json(s) => text(h, 12, s.as_bytes()),
        Value::Geometry(s) => text(h, 13, s.as_bytes()),
    }
}

/// Drops the window digests of `tables` from their state in `store`, durably: before a write
/// that may change rows they vouch for. Returns the tenants whose digests could not be
/// dropped, with why: that write must not happen for them.
pub(crate) async fn forget(store: &dyn StateStore, tables: &[&TableRef]) -> Vec<(String, ConnectorError)> {
    let mut records = Vec::with_capacity(tables.len());
    let mut refused = Vec::new();
    for table in tables {
        match store.load_table(&table.database, &table.table).await {
            Ok(Some(mut state)) if state.window_rows.is_some() => {
                state.window_rows = None;
                records.push((table.database.clone(), state));
            }
            Ok(_) => {}
            Err(e) => refused.push((table.database.clone(), e)),
        }
    }
    let names: Vec<String> = records.iter().map(|(db, _)| db.clone()).collect();
    for (db, result) in names.into_iter().zip(store.record_many(records).await) {
        if let Err(e) = result {
            refused.push((db, e.context("dropping its window digests")));
        }
    }
    refused
}

/// At most this many rows are digested by one full read (or one key range of it). A full
/// read digests every row near its highest cursor so far, and in a table whose cursor grows
/// with its key that is every row: past this many, a read stops and stores none, and the
/// next incremental read sends its window again, as it would without digests.
pub const FULL_READ_DIGESTS: u64 = 16_384;

/// (cursor instant, digest); `None` sorts first and stands for "always in the window".
type Seen = (Option<NaiveDateTime>, u128);

/// Per read: leaves out the rows the targets hold, and collects the digests of the rows the
/// next read will take again (those at or after the highest cursor seen minus the lookback;
/// rows without a cursor instant are always read again).
#[derive(Debug)]
pub struct WindowTracker {
    check: Arc<WindowCheck>,
    collected: Vec<Seen>,
    /// Rows left out because every target holds them.
    pub unchanged: u64,
    /// A full read's digests left to compute (`None`: an incremental read, no limit). A
    /// full read never leaves a row out.
    budget: Option<u64>,
    /// A full read went past its budget: it stores no digests.
    gave_up: bool,
}

impl WindowTracker {
    /// The tracker of an incremental read: leaves out what every target holds.
    pub fn new(check: Arc<WindowCheck>) -> Self {
        Self { check, collected: Vec::new(), unchanged: 0, budget: None, gave_up: false }
    }

    /// The tracker of a full read (or one key range of it): leaves nothing out, and collects
    /// the digests of the rows the next incremental read takes again, so that read sends only
    /// what changed. Up to [`FULL_READ_DIGESTS`] rows.
    pub fn for_full_read(check: Arc<WindowCheck>) -> Self {
        Self { budget: Some(FULL_READ_DIGESTS), ..Self::new(check) }
    }

    /// Digests one row; whether the targets already hold it (the caller leaves it out).
    /// `cursor` is the row's cursor instant, `max` the highest cursor value seen so far (this
    /// row's included).
    pub fn observe(&mut self, row: &[Value], cursor: Option<NaiveDateTime>, max: Option<&Value>) -> bool {
        if self.gave_up {
            return false;
        }
        let start = max.and_then(|m| window_start(self.check.lookback, m));
        let in_window = cursor.is_none() || start.is_none_or(|s| cursor.is_some_and(|c| c >= s));
        if !in_window && (self.budget.is_some() || self.check.synced.is_empty()) {
            return false;
        }
        if let Some(left) = &mut self.budget {
            if *left == 0 {
                // Any subset of the digests would do, but the ones kept so far are of the
                // oldest rows, the least likely to be in the next window.
                self.gave_up = true;
                self.collected = Vec::new();
                return false;
            }
            *left -= 1;
        }
        let digest = self.check.digest(row);
        if in_window {
            self.collected.push((cursor, digest));
            if self.collected.len() >= 2 * MAX_WINDOW_ROWS {
                prune(&mut self.collected, start);
            }
        }
        let held = self.budget.is_none() && self.check.synced.contains(&digest);
        if held {
            self.unchanged += 1;
        }
        held
    }

    /// The digests of the rows in the next read's window, which starts at `watermark` minus
    /// the lookback (dates: whole days before it). `None` when a full read gave up.
    pub fn finish(mut self, watermark: Option<&Value>) -> Option<WindowSeen> {
        if self.gave_up {
            return None;
        }
        let lookback = self.check.lookback;
        prune(&mut self.collected, watermark.and_then(|w| window_start(lookback, w)));
        // Held with the read's summary until the table's commit: no slack, and not the check,
        // whose digests of the last run are done with.
        self.collected.shrink_to_fit();
        Some(WindowSeen { key: self.check.key, lookback, collected: self.collected })
    }
}

/// The rows one read (or the key ranges of one read, put together) collected for the next
/// read's window: what a success stores, as [`WindowRows`].
#[derive(Debug, Clone)]
pub struct WindowSeen {
    key: (u64, u64),
    lookback: TimeDelta,
    collected: Vec<Seen>,
}

impl WindowSeen {
    /// Adds the rows a later part of the same read collected; `max` is the highest cursor of
    /// the parts together. Parts of different reads (another digest key) are not mixed: the
    /// rows of this one alone are still a true subset.
    pub fn absorb(&mut self, part: WindowSeen, max: Option<&Value>) {
        if self.key != part.key {
            return;
        }
        self.collected.extend(part.collected);
        prune(&mut self.collected, max.and_then(|m| window_start(self.lookback, m)));
        self.collected.shrink_to_fit();
    }

    /// How many rows this holds.
    pub fn len(&self) -> usize {
        self.collected.len()
    }

    pub fn is_empty(&self) -> bool {
        self.collected.is_empty()
    }

    /// The digests as the state stores them.
    pub fn stored(&self) -> WindowRows {
        let mut digests: Vec<u128> = self.collected.iter().map(|(_, d)| *d).collect();
        digests.sort_unstable();
        digests.dedup();
        let key = (u128::from(self.key.0) << 64) | u128::from(self.key.1);
        WindowRows { key: format!("{key:032x}"), digests: digests.iter().map(|d| format!("{d:032x}")).collect() }
    }
}

/// Where a read from watermark `w` starts: the lookback before it (dates: whole days, as
/// [`crate::strategy::lower_bound`] counts them).
fn window_start(lookback: TimeDelta, w: &Value) -> Option<NaiveDateTime> {
    let t = w.cursor_instant()?;
    match w {
        Value::Date(_) => t.checked_sub_signed(TimeDelta::try_days(lookback_days(lookback))?),
        _ => t.checked_sub_signed(lookback),
    }
}

/// Keeps the rows at or after `start`, and of those the newest [`MAX_WINDOW_ROWS`].
fn prune(collected: &mut Vec<Seen>, start: Option<NaiveDateTime>) {
    if let Some(s) = start {
        collected.retain(|(c, _)| c.is_none_or(|c| c >= s));
    }
    if collected.len() > MAX_WINDOW_ROWS {
        // Rows without an instant first (they are read every time), then the newest.
        collected.sort_unstable_by_key(|(cursor, _)| cursor.map(std::cmp::Reverse));
        collected.truncate(MAX_WINDOW_ROWS);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> NaiveDateTime {
        crate::state::parse_watermark_text(s).unwrap()
    }

    fn row(id: i64, at: &str, note: &str) -> Vec<Value> {
        vec![Value::Int(id), Value::DateTime(t(at)), Value::String(note.into())]
    }

    /// The rows through `tracker`, their cursors in column 1: the ids left out, and what it
    /// keeps for the next read.
    fn observe_rows(mut tracker: WindowTracker, rows: &[Vec<Value>]) -> (Vec<i64>, Option<WindowSeen>) {
        let (mut max, mut left_out) = (None::<Value>, Vec::new());
        for r in rows {
            if max.as_ref().is_none_or(|m| r[1].cursor_gt(m)) {
                max = Some(r[1].clone());
            }
            if tracker.observe(r, r[1].cursor_instant(), max.as_ref()) {
                let Value::Int(id) = r[0] else { unreachable!() };
                left_out.push(id);
            }
        }
        (left_out, tracker.finish(max.as_ref()))
    }

    /// One incremental read: what was left out, and what is stored.
    fn read(check: &Arc<WindowCheck>, rows: &[Vec<Value>]) -> (Vec<i64>, WindowRows) {
        let (left_out, seen) = observe_rows(WindowTracker::new(check.clone()), rows);
        (left_out, seen.unwrap().stored())
    }

    #[test]
    fn a_row_read_again_unchanged_is_left_out_and_any_change_is_sent() {
        let first = WindowCheck::new(&[None], "shape", 10);
        let rows = [
            row(1, "2026-01-01 09:00:00", "a"),
            row(2, "2026-01-01 11:55:00", "b"),
            row(3, "2026-01-01 12:00:00", "c"),
        ];
        let (left_out, stored) = read(&first, &rows);
        assert!(left_out.is_empty(), "nothing is held before the first digests");
        // Row 1 is outside the next window (before 11:50): not stored.
        assert_eq!(stored.len(), 2, "{stored:?}");

        let next = WindowCheck::new(&[Some(&stored)], "shape", 10);
        assert_eq!(next.synced_rows(), 2);
        let again = [
            row(2, "2026-01-01 11:55:00", "b"),
            // Changed without touching its cursor (a second-resolution clock, an application
            // that does not stamp): sent.
            row(3, "2026-01-01 12:00:00", "c changed"),
            // A late commit inside the window: sent.
            row(4, "2026-01-01 11:58:00", "d"),
        ];
        let (left_out, stored_again) = read(&next, &again);
        assert_eq!(left_out, [2]);
        assert_eq!(stored_again.len(), 3);
        assert_eq!(stored_again.key, stored.key, "the key is kept");

        // The same rows under another target shape, or a value of another kind, are new rows.
        let reshaped = WindowCheck::new(&[Some(&stored)], "shape with a column more", 10);
        assert!(read(&reshaped, &again).0.is_empty());
        let typed = [vec![Value::Int(2), Value::DateTime(t("2026-01-01 11:55:00")), Value::Json("b".into())]];
        assert!(read(&next, &typed).0.is_empty());
    }

    #[test]
    fn rows_are_left_out_only_when_every_target_holds_them_under_one_key() {
        let first = WindowCheck::new(&[None], "s", 10);
        let (_, both) = read(&first, &[row(1, "2026-01-01 12:00:00", "a"), row(2, "2026-01-01 12:00:00", "b")]);
        let (_, one) = read(&first, &[row(1, "2026-01-01 12:00:00", "a")]);
        let rows = [row(1, "2026-01-01 12:00:00", "a"), row(2, "2026-01-01 12:00:00", "b")];
        assert_eq!(read(&WindowCheck::new(&[Some(&both), Some(&one)], "s", 10), &rows).0, [1]);
        assert!(read(&WindowCheck::new(&[Some(&both), None], "s", 10), &rows).0.is_empty());
        let other_key = read(&WindowCheck::new(&[None], "s", 10), &rows).1;
        assert!(read(&WindowCheck::new(&[Some(&both), Some(&other_key)], "s", 10), &rows).0.is_empty());
        // Digests that do not parse count as none.
        let broken = WindowRows { key: both.key.clone(), digests: "xyz".into() };
        assert!(read(&WindowCheck::new(&[Some(&broken)], "s", 10), &rows).0.is_empty());
    }

    #[test]
    fn the_stored_digests_are_capped_keeping_the_newest_and_rows_without_a_cursor() {
        let check = WindowCheck::new(&[None], "s", 24 * 60);
        let base = t("2026-01-01 00:00:00");
        let mut rows: Vec<Vec<Value>> = (0..1000)
            .map(|i| vec![Value::Int(i), Value::DateTime(base + TimeDelta::minutes(i)), Value::String("x".into())])
            .collect();
        rows.push(vec![Value::Int(5000), Value::Null, Value::String("no cursor".into())]);
        let (_, stored) = read(&check, &rows);
        assert_eq!(stored.len(), MAX_WINDOW_ROWS);
        // Read again: the newest rows and the row without a cursor are left out, nothing else.
        let again = WindowCheck::new(&[Some(&stored)], "s", 24 * 60);
        let (left_out, _) = read(&again, &rows);
        assert_eq!(left_out.len(), MAX_WINDOW_ROWS);
        assert!(left_out.contains(&5000) && left_out.contains(&999) && !left_out.contains(&0), "{left_out:?}");
    }

    #[test]
    fn date_cursors_keep_whole_days_of_lookback() {
        let check = WindowCheck::new(&[None], "s", 10);
        let d = |s: &str| Value::Date(chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap());
        let rows = [
            vec![Value::Int(1), d("2026-01-01")],
            vec![Value::Int(2), d("2026-01-02")],
            vec![Value::Int(3), d("2025-12-30")],
        ];
        let (_, stored) = read(&check, &rows);
        assert_eq!(stored.len(), 2, "the next read starts a whole day back: {stored:?}");
    }

    /// A full read: every row, its digests collected by the same rules; how many rows it left
    /// out.
    fn read_full(check: &Arc<WindowCheck>, rows: &[Vec<Value>]) -> (usize, Option<WindowSeen>) {
        let (left_out, seen) = observe_rows(WindowTracker::for_full_read(check.clone()), rows);
        (left_out.len(), seen)
    }

    #[test]
    fn a_full_read_leaves_nothing_out_and_stores_what_the_next_read_would_leave_out() {
        let rows = [
            row(1, "2026-01-01 09:00:00", "a"),
            row(2, "2026-01-01 11:55:00", "b"),
            row(3, "2026-01-01 12:00:00", "c"),
        ];
        let (_, held) = read(&WindowCheck::new(&[None], "s", 10), &rows);
        // Even a check holding every row's digest leaves nothing out of a full read.
        let (left_out, seen) = read_full(&WindowCheck::new(&[Some(&held)], "s", 10), &rows);
        assert_eq!(left_out, 0);
        let stored = seen.unwrap().stored();
        assert_eq!(stored.len(), 2, "row 1 is before the next window");
        let (left_out, _) = read(&WindowCheck::new(&[Some(&stored)], "s", 10), &rows[1..]);
        assert_eq!(left_out, [2, 3], "the first incremental read sends nothing that is unchanged");
    }

    #[test]
    fn a_full_read_gives_up_its_digests_past_its_budget() {
        let base = t("2026-01-01 00:00:00");
        // Cursors that grow with the key: every row is in the window when it is read.
        let rows: Vec<Vec<Value>> = (0..FULL_READ_DIGESTS as i64 + 1)
            .map(|i| vec![Value::Int(i), Value::DateTime(base + TimeDelta::seconds(i)), Value::Null])
            .collect();
        let check = WindowCheck::new(&[], "s", 10);
        assert!(read_full(&check, &rows).1.is_none());
        assert_eq!(read_full(&check, &rows[1..]).1.unwrap().len(), MAX_WINDOW_ROWS, "one row fewer: the newest kept");
    }

    #[test]
    fn key_ranges_read_apart_keep_the_window_of_their_highest_cursor() {
        let check = WindowCheck::new(&[], "s", 10);
        let base = t("2026-01-01 00:00:00");
        let part = |ids: std::ops::Range<i64>| -> Vec<Vec<Value>> {
            ids.map(|i| vec![Value::Int(i), Value::DateTime(base + TimeDelta::minutes(i)), Value::Null]).collect()
        };
        // The first range's newest rows are in its own window, not in the whole read's.
        let (_, first) = read_full(&check, &part(0..100));
        let (_, second) = read_full(&check, &part(100..105));
        let mut first = first.unwrap();
        assert_eq!(first.len(), 11);
        first.absorb(second.unwrap(), Some(&Value::DateTime(base + TimeDelta::minutes(104))));
        assert_eq!(first.len(), 11, "minutes 94 to 104");
        // Parts of another read (another key) are not mixed in.
        let (_, other) = read_full(&WindowCheck::new(&[], "s", 10), &part(105..106));
        first.absorb(other.unwrap(), Some(&Value::DateTime(base + TimeDelta::minutes(105))));
        assert_eq!(first.len(), 11, "nothing added");
    }
}
