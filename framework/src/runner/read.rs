//! Reading one tenant's table once for every target: one attempt opens the targets' staging
//! writers (resumed where an interrupted full sync left durable ranges), runs the source read
//! as a task of its own, fans its batches out, and finishes the writers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::mpsc;

use crate::error::{ConnectorError, Result};
use crate::events::Event;
use crate::schema::TableRef;
use crate::sink::{ResumeFrom, StageRequest, Staged, TargetTable};
use crate::source::{BatchSender, ReadRequest, ReadSummary};
use crate::strategy::TablePlan;
use crate::value::RowBatch;

use super::fanout::Fanout;
use super::resume::{self, Resume};
use super::{RunContext, Runner, Target};

/// Aborts a spawned task when dropped, so an abandoned attempt leaves no reader behind.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Reads running in tasks of their own (one, or a big table's segments side by side), and
/// per reader the channel its batches arrive on and the way back to it: a written batch goes
/// back to be freed by its reader, where it was allocated. Dropping it stops them.
pub(super) struct StartedRead {
    table: TableRef,
    tasks: Vec<AbortOnDrop<Result<ReadSummary>>>,
    parts: Vec<(mpsc::Receiver<RowBatch>, mpsc::UnboundedSender<RowBatch>)>,
}

/// Per target: its plan and what it staged (or why it failed).
pub(super) type Finished<'a> = Vec<(&'a Target, TablePlan, Result<Staged>)>;

/// One attempt at one tenant's table. A source failure fails the attempt (the caller retries
/// it when transient); a writer failure fails only its target.
pub(super) async fn attempt<'a>(
    ctx: &RunContext<'_>,
    request: &ReadRequest,
    target_table: &TargetTable,
    plans: &[(&'a Target, TablePlan)],
) -> Result<(ReadSummary, Finished<'a>)> {
    let runner = ctx.runner;
    let table = &request.schema.table;
    let started = Instant::now();
    let chunking = resume::key_chunking(&runner.settings, request);
    // A read in one pass starts now: its first rows arrive while the targets set up staging,
    // which takes a round trip or more per target.
    let early = chunking.is_none().then(|| start_read(runner, request.clone()));
    let resume = match &chunking {
        Some((key, _)) => resume::usable_point(request, plans, key).await,
        None => None,
    };
    let mut fanout = Fanout::new(table.to_string());
    let resumed = open_writers(&mut fanout, target_table, request, plans, resume).await;
    if fanout.is_dead() {
        // Every target refused to stage: the first reason is the attempt's error.
        return Err(fanout.first_error());
    }
    let summary = match chunking {
        None => {
            let read = early.unwrap_or_else(|| start_read(runner, request.clone()));
            consume(runner, read, &mut fanout, started).await?
        }
        Some((key, limit)) => {
            resume::read_in_ranges(runner, request, &mut fanout, &key, limit, resumed.as_ref(), started).await?
        }
    };
    let finished = fanout.finish().await;
    for (target, _, staged) in &finished {
        if let Ok(s) = staged {
            Event::TableStaged {
                table: table.clone(),
                target: target.id.clone(),
                rows: s.rows,
                elapsed: started.elapsed(),
            }
            .emit(ctx.listeners());
        }
    }
    Ok((summary, finished))
}

/// Opens one writer per target: resumed from `resume` when every target can resume it, else
/// fresh for all (a resume that only some targets can take would give them different reads).
/// Returns the resume point in use.
async fn open_writers<'a>(
    fanout: &mut Fanout<'a>,
    target_table: &TargetTable,
    request: &ReadRequest,
    plans: &[(&'a Target, TablePlan)],
    resume: Option<Resume>,
) -> Option<Resume> {
    let table = &request.schema.table;
    if let Some(point) = resume {
        let mut writers = Vec::new();
        for ((target, plan), handle) in plans.iter().zip(&point.handles) {
            let stage = StageRequest {
                table: target_table,
                tenant: &request.schema,
                mode: plan.mode,
                write: plan.write,
                resume: Some(ResumeFrom { handle, rows: point.point.rows }),
            };
            match target.sink.stage(stage).await {
                Ok(w) => writers.push(w),
                Err(e) => {
                    tracing::warn!(%table, target = %target.id, error = %e, "cannot resume the interrupted full sync; starting over");
                    writers.clear();
                    break;
                }
            }
        }
        if writers.len() == plans.len() {
            for ((target, plan), w) in plans.iter().zip(writers) {
                fanout.push(target, plan.clone(), Ok(w));
            }
            return Some(point);
        }
    }
    for (target, plan) in plans {
        let stage = StageRequest {
            table: target_table,
            tenant: &request.schema,
            mode: plan.mode,
            write: plan.write,
            resume: None,
        };
        fanout.push(target, plan.clone(), target.sink.stage(stage).await);
    }
    None
}

/// Starts reading `request` as a task of its own, so that decoding rows and encoding them for
/// the targets use two cores.
pub(super) fn start_read(runner: &Runner, request: ReadRequest) -> StartedRead {
    start_reads(runner, request.schema.table.clone(), vec![request])
}

/// Starts each of `requests` (parts of one table's read) as a task of its own, each feeding
/// its own channel.
pub(super) fn start_reads(runner: &Runner, table: TableRef, requests: Vec<ReadRequest>) -> StartedRead {
    // Batches held per table: one being encoded, and per reader one being filled and its
    // channel's: two for one reader, one each for several.
    let capacity = if requests.len() > 1 { 1 } else { 2 };
    let mut parts = Vec::with_capacity(requests.len());
    let tasks = requests
        .into_iter()
        .map(|request| {
            let (tx, rx) = mpsc::channel(capacity);
            let (spent, spent_rx) = mpsc::unbounded_channel();
            parts.push((rx, spent));
            let source = Arc::clone(&runner.source);
            let output = BatchSender::with_spent(tx, spent_rx);
            AbortOnDrop(tokio::spawn(async move { source.read(request, output).await }))
        })
        .collect();
    StartedRead { table, tasks, parts }
}

/// Writes a started read's batches into every live writer.
pub(super) async fn consume(
    runner: &Runner,
    read: StartedRead,
    fanout: &mut Fanout<'_>,
    started: Instant,
) -> Result<ReadSummary> {
    let mut parts = consume_parts(runner, read, fanout, started).await?;
    Ok(parts.pop().unwrap_or_default())
}

/// Writes the batches of every part of a started read into every live writer; the parts'
/// summaries in the order they were started. The first part to fail stops the others.
pub(super) async fn consume_parts(
    runner: &Runner,
    read: StartedRead,
    fanout: &mut Fanout<'_>,
    started: Instant,
) -> Result<Vec<ReadSummary>> {
    let StartedRead { table, tasks, parts } = read;
    let read = async {
        // Owned here: returning early drops (aborts) the parts still running.
        let mut tasks = tasks;
        futures::future::try_join_all(tasks.iter_mut().map(|task| async {
            (&mut task.0)
                .await
                .unwrap_or_else(|e| Err(ConnectorError::permanent(format!("{table}: the read task failed: {e}"))))
        }))
        .await
    };
    let consume = async {
        // Every part's batches, each with the way back to its reader. Owned here, so that
        // stopping early drops the channels and a reader's next send fails instead of waiting
        // on a full channel forever.
        let mut batches = futures::stream::select_all(parts.into_iter().map(|(rx, spent)| {
            Box::pin(futures::stream::unfold((rx, spent), |(mut rx, spent)| async move {
                let batch = rx.recv().await?;
                Some(((batch, spent.clone()), (rx, spent)))
            }))
        }));
        let (mut rows, mut bytes) = (0u64, 0u64);
        let mut last_progress = Instant::now();
        while let Some((batch, spent)) = batches.next().await {
            rows += batch.len() as u64;
            bytes += batch.bytes as u64;
            if last_progress.elapsed() >= Duration::from_secs(1) {
                last_progress = Instant::now();
                Event::ReadProgressed { table: table.clone(), rows, bytes, elapsed: started.elapsed() }
                    .emit(&runner.listeners);
            }
            fanout.write(&batch).await;
            // A reader that has ended no longer takes it back: the batch is freed here then.
            let _ = spent.send(batch);
            if fanout.is_dead() {
                break;
            }
        }
        Event::RowsRead { table: table.clone(), rows, bytes }.emit(&runner.listeners);
    };
    let (summary, ()) = tokio::join!(read, consume);
    match summary {
        Ok(s) => Ok(s),
        // The read stopped because no writer was left; report the writers' reason.
        Err(_) if fanout.is_dead() => Err(fanout.first_error()),
        Err(e) => Err(e),
    }
}
