//! Applying a batch: one commit per target table, then the stream's position recorded (never
//! before the commit), and when to apply ([`Cadence`]).

use std::collections::BTreeMap;

use super::*;

impl TargetStream<'_> {
    /// Applies the batch and records `position` as applied. A failure leaves the recorded
    /// position where it was: the next stream reads those changes again, and re-applying them
    /// changes nothing.
    pub(super) async fn flush(
        &mut self,
        batch: &mut Batch,
        position: &ChangePosition,
        commit_at: Option<DateTime<Utc>>,
        caught_up: bool,
    ) -> Result<()> {
        let open = std::mem::replace(batch, Batch::new(self.runner.settings.batch_size));
        if !open.is_empty() {
            self.state.applying_to = Some(position.seq.clone());
            self.state.updated_at = Utc::now().naive_utc();
            self.target.state.record_stream(self.state.clone()).await?;
            let applied = match open.apply(&self.target, &self.target_tables, &self.runner.listeners).await {
                Ok(a) => a,
                Err(e) => {
                    if let Some(handle) = e.in_doubt() {
                        // An apply whose outcome is unknown must end before anything newer is
                        // applied, or it could land after it.
                        self.resolve(handle).await;
                    }
                    return Err(e);
                }
            };
            self.report.upserts += applied.upserts;
            self.report.deletes += applied.deletes;
            self.report.flushes += 1;
            for (table, e) in applied.refused {
                self.halt(&table, &e).await;
            }
        } else if self.state.applied.as_ref() == Some(position)
            && self.saved_at.elapsed() < Duration::from_secs(30)
            && !(caught_up && self.state.lag_seconds != Some(0.0))
        {
            // Nothing new: the state is saved again only now and then, so `status` can tell a
            // live stream from a dead one. (Unless the stream has just caught up: the lag saved
            // while it was behind must not outlive it.)
            return Ok(());
        }
        self.checkpoint(position, commit_at, caught_up).await
    }

    pub(super) async fn resolve(&self, handle: &str) {
        let mut wait = Duration::from_secs(1);
        loop {
            match self.target.sink.resolve(handle).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(target = %self.target.id, %handle, error = %e, "an apply in doubt is not settled yet");
                    if self.stopping() {
                        return;
                    }
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(60));
                }
            }
        }
    }

    /// Records that everything before `position` is applied.
    pub(super) async fn checkpoint(
        &mut self,
        position: &ChangePosition,
        commit_at: Option<DateTime<Utc>>,
        caught_up: bool,
    ) -> Result<()> {
        let now = Utc::now();
        self.state.applied = Some(position.clone());
        self.state.carried = BTreeMap::new();
        for table in self.tracked.iter().filter(|(_, t)| !t.paused).map(|(t, _)| t) {
            self.state.carried.entry(table.database.clone()).or_default().insert(table.table.clone());
        }
        if commit_at.is_some() {
            self.state.applied_commit_at = commit_at;
        }
        self.state.applying_to = None;
        if let Ok(status) = self.log.status().await {
            self.state.head = Some(status.head);
        }
        // Nothing left to apply means no lag, however old the last commit is.
        let at_head = self.state.head.as_ref().is_some_and(|h| h.server == position.server && h.seq <= position.seq);
        let lag = if caught_up || at_head {
            0.0
        } else {
            self.state.applied_commit_at.map_or(0.0, |t| ((now - t).num_milliseconds() as f64 / 1000.0).max(0.0))
        };
        self.state.lag_seconds = Some(lag);
        self.state.status = "streaming".into();
        self.state.error = None;
        self.state.updated_at = now.naive_utc();
        self.target.state.record_stream(self.state.clone()).await?;
        self.saved_at = Instant::now();
        // Tables whose own position is older now follow the stream's.
        for t in self.tracked.values_mut() {
            if t.after.seq < position.seq && t.after.server == position.server {
                t.after = position.clone();
                t.settled = None;
            }
        }
        Event::StreamCheckpointed {
            target: self.target.id.clone(),
            position: position.to_string(),
            events: std::mem::take(&mut self.events_since_checkpoint),
            lag_seconds: lag,
        }
        .emit(&self.runner.listeners);
        Ok(())
    }
}

/// When to apply. While the stream keeps up, a batch is applied once it is
/// `cdc_flush_seconds` old (a batch with nothing in it only records the position, as often).
/// While it reads a backlog (its changes are older than that), batches are applied every
/// 30 s at the least, or at 100,000 changes: an apply costs about the same whatever its size.
pub(super) struct Cadence {
    every: Duration,
    last: Instant,
    /// When the open batch took its first change.
    opened: Option<Instant>,
}

impl Cadence {
    pub(super) fn new(every: Duration) -> Self {
        Self { every, last: Instant::now(), opened: None }
    }

    /// A change is being staged.
    pub(super) fn staging(&mut self) {
        self.opened.get_or_insert_with(Instant::now);
    }

    pub(super) fn due(&self, changes: u64, behind: bool) -> bool {
        match self.opened {
            None => self.last.elapsed() >= self.every,
            Some(opened) if behind => opened.elapsed() >= self.every.max(Duration::from_secs(30)) || changes >= 100_000,
            Some(opened) => opened.elapsed() >= self.every,
        }
    }

    pub(super) fn applied(&mut self) {
        self.last = Instant::now();
        self.opened = None;
    }
}

/// Whether the stream reads a backlog: the last commit it read is older than one apply
/// interval (and at least 5 s).
pub(super) fn behind(last_commit: Option<DateTime<Utc>>, caught_up: bool, every: Duration) -> bool {
    let Some(at) = last_commit else { return false };
    let lag = (Utc::now() - at).to_std().unwrap_or_default();
    !caught_up && lag > every.max(Duration::from_secs(5))
}
