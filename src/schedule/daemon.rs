//! The daemon: watches pipeline files, fires each scheduled pipeline on its
//! cron, applies the overlap, catch-up and retry policies, and shuts down
//! gracefully.
//!
//! Per pipeline file there is one *ticker* task (sleeps until the next fire,
//! hands the fire to the pipeline's slot) and per pipeline name at most one
//! *driver* task at a time (runs a fire, its retries, then whatever waits in
//! the slot). Slots are keyed by pipeline name and outlive the file: a file
//! deleted and added again shares the slot of its earlier runs, so its runs
//! never overlap. Removing a file drops what waits in its slot and its
//! pending retries; a run in flight finishes. A reload sends the new config
//! to the ticker; a run in flight keeps the config it started with.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use super::fires;
use super::metrics::{Finished, Metrics};
use crate::config::{Overlap, Pipeline, parse_cron};
use crate::error::Error;
use crate::quality::Outcome;
use crate::run::{RunOptions, new_run_id};
use crate::state::{RunEntry, RunFilter, StateStore, Trigger};

/// What the HTTP endpoints and the daemon share.
#[derive(Default)]
pub struct Shared {
    pub metrics: Metrics,
    /// The last good config of every watched pipeline file.
    pipelines: Mutex<BTreeMap<PathBuf, Arc<Pipeline>>>,
}

impl Shared {
    /// The pipelines loaded now (last good versions), by file.
    pub fn pipelines(&self) -> Vec<Arc<Pipeline>> {
        lock(&self.pipelines).values().cloned().collect()
    }

    fn set(&self, file: &Path, pipeline: Option<Arc<Pipeline>>) {
        let mut map = lock(&self.pipelines);
        match pipeline {
            Some(p) => {
                map.insert(file.to_path_buf(), p);
            }
            None => {
                map.remove(file);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// One fire to run.
struct Job {
    pipeline: Arc<Pipeline>,
    fire: DateTime<Utc>,
    trigger: Trigger,
}

/// A pipeline's runs: whether one is going, and what waits for it.
struct Slot {
    state: Mutex<SlotState>,
    /// Bumped when the pipeline's file is removed: retries of runs started
    /// before are not made.
    generation: watch::Sender<u64>,
}

impl Default for Slot {
    fn default() -> Slot {
        Slot {
            state: Mutex::default(),
            generation: watch::channel(0).0,
        }
    }
}

#[derive(Default)]
struct SlotState {
    busy: bool,
    waiting: VecDeque<Job>,
}

/// The daemon-wide context of tickers and drivers.
struct Ctx {
    shared: Arc<Shared>,
    /// True once shutdown began: nothing new starts.
    stop: watch::Sender<bool>,
    /// True once the grace period is over: runs in flight are dropped.
    cancel: watch::Sender<bool>,
    /// Driver tasks alive.
    active: AtomicUsize,
    idle: Notify,
    /// The slot of every pipeline name seen.
    slots: Mutex<BTreeMap<String, Arc<Slot>>>,
}

impl Ctx {
    /// The slot of pipeline `name` (made on first use, never dropped).
    fn slot(&self, name: &str) -> Arc<Slot> {
        lock(&self.slots)
            .entry(name.to_string())
            .or_default()
            .clone()
    }

    /// The file of pipeline `name` is gone: what waits for its slot is
    /// dropped and its pending retries are not made.
    fn unschedule(&self, name: &str) {
        let slot = self.slot(name);
        let dropped = {
            let mut st = lock(&slot.state);
            std::mem::take(&mut st.waiting).len()
        };
        slot.generation.send_modify(|g| *g += 1);
        if dropped > 0 {
            tracing::info!(pipeline = %name, dropped, "pipeline file removed: waiting fires dropped");
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn done(&self) {
        self.active.fetch_sub(1, Ordering::SeqCst);
        self.idle.notify_waiters();
    }

    /// Waits until no driver is alive.
    async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Waits until a `watch<bool>` turns true (or its sender is gone).
async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// How the daemon runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Pipeline files, or folders whose `*.yaml`/`*.yml` files are pipelines.
    pub paths: Vec<PathBuf>,
    /// How long runs in flight may finish after SIGTERM/SIGINT.
    pub grace: Duration,
    /// How often pipeline files are checked for changes.
    pub poll: Duration,
}

/// A watched pipeline file.
struct Watched {
    /// Its stamp and its SQL files' at the last load attempt.
    stamp: Option<Stamp>,
    /// The SQL files its last good version reads: an edit reloads it too.
    sql: Vec<PathBuf>,
    /// The scheduler of its last good version.
    entry: Option<Entry>,
    /// Its last version was refused: another file has its name.
    refused: bool,
}

struct Entry {
    config: watch::Sender<Arc<Pipeline>>,
    ticker: JoinHandle<()>,
}

/// When a pipeline file and the SQL files it reads last changed: modification
/// time and length of each.
type Stamp = Vec<Option<(SystemTime, u64)>>;

fn stamp(file: &Path, sql: &[PathBuf]) -> Stamp {
    std::iter::once(file)
        .chain(sql.iter().map(PathBuf::as_path))
        .map(|p| {
            let m = std::fs::metadata(p).ok()?;
            Some((m.modified().ok()?, m.len()))
        })
        .collect()
}

/// Loads a pipeline file with `load`, and the stamp its next edit is told by.
///
/// The stamp is taken *before* the files are read: an edit made while they
/// are read then differs from it, and the next scan loads the file again (one
/// taken after would match the edit and hide it). Which SQL files to stamp is
/// known only once loaded: when they are not `sql`, those of the last load, it
/// is loaded once more with theirs stamped first. Should the list change again
/// (files edited meanwhile), the stamp is empty: no scan's is (it holds the
/// pipeline file's at least), so the next scan loads it again.
fn load_stamped<E>(
    file: &Path,
    sql: &[PathBuf],
    load: impl Fn(&Path) -> Result<Pipeline, E>,
) -> Result<(Pipeline, Stamp), E> {
    let mut sql = sql.to_vec();
    let mut tries = 0;
    loop {
        let before = stamp(file, &sql);
        let pipeline = load(file)?;
        let read = pipeline.sql_files();
        tries += 1;
        if read == sql {
            return Ok((pipeline, before));
        }
        if tries == 2 {
            return Ok((pipeline, Stamp::new()));
        }
        sql = read;
    }
}

/// The pipeline files under `paths` now, sorted.
pub fn pipeline_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            if let Ok(entries) = std::fs::read_dir(path) {
                for e in entries.flatten() {
                    let p = e.path();
                    let yaml = p
                        .extension()
                        .and_then(|x| x.to_str())
                        .is_some_and(|x| x == "yaml" || x == "yml");
                    if yaml && p.is_file() {
                        out.push(p);
                    }
                }
            }
        } else if path.is_file() {
            out.push(path.clone());
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Runs the daemon until `shutdown` turns 1 (the first SIGTERM/SIGINT), then
/// shuts down gracefully: runs in flight get the grace period, or less if
/// `shutdown` turns 2 (a second signal).
pub async fn run(
    options: Options,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<u8>,
) -> Result<(), Error> {
    for path in &options.paths {
        if !path.exists() {
            return Err(Error::Usage(format!(
                "{} does not exist: pass pipeline files or folders of them",
                path.display()
            )));
        }
    }
    let (stop, _) = watch::channel(false);
    let (cancel, _) = watch::channel(false);
    let ctx = Arc::new(Ctx {
        shared,
        stop,
        cancel,
        active: AtomicUsize::new(0),
        idle: Notify::new(),
        slots: Mutex::default(),
    });
    let mut watched: BTreeMap<PathBuf, Watched> = BTreeMap::new();
    scan(&ctx, &options.paths, &mut watched, true);
    if watched.is_empty() {
        tracing::warn!("no pipeline files found yet; watching for new ones");
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(options.poll) => scan(&ctx, &options.paths, &mut watched, false),
            _ = shutdown.wait_for(|s| *s >= 1) => break,
        }
    }
    tracing::info!(
        grace_s = options.grace.as_secs_f64(),
        "shutting down: no new runs; runs in flight get the grace period"
    );
    let _ = ctx.stop.send(true);
    for (_, w) in watched {
        if let Some(e) = w.entry {
            e.ticker.abort();
        }
    }
    let finished = tokio::select! {
        r = tokio::time::timeout(options.grace, ctx.wait_idle()) => r.is_ok(),
        _ = shutdown.wait_for(|s| *s >= 2) => false,
    };
    if !finished {
        tracing::warn!("cancelling the runs still going");
        let _ = ctx.cancel.send(true);
        if tokio::time::timeout(Duration::from_secs(30), ctx.wait_idle())
            .await
            .is_err()
        {
            tracing::error!("runs did not stop after cancellation");
        }
    }
    tracing::info!("stopped");
    Ok(())
}

/// Loads new and changed pipeline files, stops deleted ones.
fn scan(ctx: &Arc<Ctx>, paths: &[PathBuf], watched: &mut BTreeMap<PathBuf, Watched>, first: bool) {
    let files = pipeline_files(paths);
    let gone: Vec<PathBuf> = watched
        .keys()
        .filter(|f| !files.contains(f))
        .cloned()
        .collect();
    for file in gone {
        if let Some(w) = watched.remove(&file)
            && let Some(e) = w.entry
        {
            e.ticker.abort();
            let name = e.config.borrow().name.clone();
            tracing::info!(file = %file.display(), pipeline = %name, "pipeline file removed: no longer scheduled");
            ctx.unschedule(&name);
        }
        ctx.shared.set(&file, None);
    }
    for file in files {
        let w = watched.entry(file.clone()).or_insert(Watched {
            stamp: None,
            sql: Vec::new(),
            entry: None,
            refused: false,
        });
        let now = Some(stamp(&file, &w.sql));
        // A file refused for its name is looked at again each scan (the
        // other file may have gone).
        if w.stamp.is_some() && w.stamp == now && !w.refused {
            continue;
        }
        let reload = w.stamp.is_some() && !w.refused;
        let unchanged = w.stamp == now;
        w.stamp = now;
        let pipeline = match load_stamped(&file, &w.sql, crate::config::load) {
            Ok((p, stamped)) => {
                w.sql = p.sql_files();
                w.stamp = Some(stamped);
                Arc::new(p)
            }
            Err(e) => {
                let text = crate::config::env::redact(&e.to_string());
                if w.entry.is_some() {
                    tracing::error!(file = %file.display(), "the edited pipeline file is broken; the last good version keeps running:\n{text}");
                } else {
                    tracing::error!(file = %file.display(), "the pipeline file cannot be loaded; not scheduled:\n{text}");
                }
                continue;
            }
        };
        if let Some(other) = lock(&ctx.shared.pipelines)
            .iter()
            .find(|(f, p)| **f != file && p.name == pipeline.name)
            .map(|(f, _)| f.clone())
        {
            // Logged once per version of the file.
            if !(w.refused && unchanged) {
                let what = if w.entry.is_some() {
                    "the last good version keeps running"
                } else {
                    "not scheduled"
                };
                tracing::error!(pipeline = %pipeline.name, file = %file.display(), other = %other.display(), "another pipeline file has the same name: {what}");
            }
            w.refused = true;
            continue;
        }
        w.refused = false;
        describe(&pipeline, &file, reload);
        ctx.shared.set(&file, Some(pipeline.clone()));
        ctx.shared.metrics.register(&pipeline.name);
        match &w.entry {
            Some(e) => {
                let _ = e.config.send(pipeline);
            }
            None => {
                if first {
                    match StateStore::open(&pipeline.state).and_then(|s| {
                        s.abandon_running(
                            &pipeline.name,
                            "cancelled: the process running it stopped (found when the scheduler started)",
                        )
                    }) {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::warn!(pipeline = %pipeline.name, runs = n, "runs left `running` by an earlier process marked cancelled")
                        }
                        Err(e) => tracing::error!(pipeline = %pipeline.name, error = %e, "the run history cannot be opened"),
                    }
                }
                let (config, rx) = watch::channel(pipeline);
                let ticker = tokio::spawn(tick(ctx.clone(), rx));
                w.entry = Some(Entry { config, ticker });
            }
        }
    }
}

fn describe(p: &Pipeline, file: &Path, reload: bool) {
    let verb = if reload { "reloaded" } else { "loaded" };
    match &p.schedule {
        Some(cron) => {
            let next = parse_cron(cron)
                .ok()
                .and_then(|c| fires::next_fire(&c, p.timezone, Utc::now()))
                .map(|t| t.with_timezone(&p.timezone).to_rfc3339())
                .unwrap_or_else(|| "never".into());
            tracing::info!(
                pipeline = %p.name,
                file = %file.display(),
                schedule = %cron,
                timezone = %p.timezone,
                overlap = overlap_name(p.scheduling.overlap),
                catch_up = catch_up_name(p.scheduling.catch_up),
                next = %next,
                "{verb}: scheduled"
            )
        }
        None => tracing::info!(
            pipeline = %p.name,
            file = %file.display(),
            "{verb}: not scheduled (no `schedule:`)"
        ),
    }
}

fn overlap_name(o: Overlap) -> &'static str {
    match o {
        Overlap::Skip => "skip",
        Overlap::Queue => "queue",
    }
}

fn catch_up_name(c: crate::config::CatchUp) -> &'static str {
    match c {
        crate::config::CatchUp::None => "none",
        crate::config::CatchUp::Latest => "latest",
        crate::config::CatchUp::All => "all",
    }
}

/// The ticker of one pipeline file: catch-up on start, then fire on the cron
/// of the latest config.
async fn tick(ctx: Arc<Ctx>, mut config: watch::Receiver<Arc<Pipeline>>) {
    let now = Utc::now();
    let pipeline = config.borrow_and_update().clone();
    if let Some(cron) = pipeline
        .schedule
        .as_deref()
        .and_then(|c| parse_cron(c).ok())
    {
        catch_up(&ctx, &ctx.slot(&pipeline.name), &pipeline, &cron, now);
    }
    // The fire the next one follows: fires are never skipped because the
    // ticker woke late, only dropped by the overlap policy.
    let mut last = now;
    loop {
        let pipeline = config.borrow_and_update().clone();
        let next = pipeline
            .schedule
            .as_deref()
            .and_then(|c| parse_cron(c).ok())
            .and_then(|cron| {
                let now = Utc::now();
                let next = fires::next_fire(&cron, pipeline.timezone, last)?;
                // Far behind (the machine slept): resume from now.
                let next = if now - next > chrono::Duration::seconds(60) {
                    tracing::warn!(pipeline = %pipeline.name, behind = %next, "fires far in the past dropped");
                    fires::next_fire(&cron, pipeline.timezone, now.max(last))?
                } else {
                    next
                };
                // Never a fire at or before the one already fired.
                if next <= last {
                    tracing::error!(pipeline = %pipeline.name, next = %next, last = %last, "the cron gave a fire not after the last one; not scheduled until the file changes");
                    return None;
                }
                Some(next)
            });
        let Some(next) = next else {
            // Not scheduled (or never fires again): wait for a new config.
            if config.changed().await.is_err() {
                return;
            }
            last = last.max(Utc::now());
            continue;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or_default();
        // Biased, the sleep first: a fire that is due is run even when the
        // file changed at the same moment (a random pick would lose it).
        tokio::select! {
            biased;
            _ = tokio::time::sleep(wait) => {
                last = next;
                let slot = ctx.slot(&pipeline.name);
                fire(&ctx, &slot, Job { pipeline, fire: next, trigger: Trigger::Schedule });
            }
            changed = config.changed() => {
                if changed.is_err() {
                    return;
                }
                last = last.max(Utc::now());
            }
        }
    }
}

/// Queues the fires missed while the daemon was down, per `catch_up:`.
fn catch_up(
    ctx: &Arc<Ctx>,
    slot: &Arc<Slot>,
    pipeline: &Arc<Pipeline>,
    cron: &croner::Cron,
    now: DateTime<Utc>,
) {
    let last = match StateStore::open(&pipeline.state).and_then(|s| s.last_fire(&pipeline.name)) {
        Ok(last) => last.and_then(|t| {
            DateTime::parse_from_rfc3339(&t)
                .ok()
                .map(|t| t.with_timezone(&Utc))
        }),
        Err(e) => {
            tracing::error!(pipeline = %pipeline.name, error = %e, "the run history cannot be read; no catch-up");
            return;
        }
    };
    let (missed, dropped) = fires::catch_up(
        pipeline.scheduling.catch_up,
        cron,
        pipeline.timezone,
        last,
        now,
    );
    if dropped {
        tracing::warn!(pipeline = %pipeline.name, kept = missed.len(), "more fires were missed than are caught up; the oldest are dropped");
    }
    if missed.is_empty() {
        return;
    }
    tracing::info!(
        pipeline = %pipeline.name,
        missed = missed.len(),
        policy = catch_up_name(pipeline.scheduling.catch_up),
        "catching up on fires missed while the scheduler was down"
    );
    let mut jobs: VecDeque<Job> = missed
        .into_iter()
        .map(|fire| Job {
            pipeline: pipeline.clone(),
            fire,
            trigger: Trigger::CatchUp,
        })
        .collect();
    let first = {
        let mut st = lock(&slot.state);
        st.waiting.append(&mut jobs);
        if st.busy {
            None
        } else {
            st.busy = true;
            st.waiting.pop_front()
        }
    };
    if let Some(job) = first {
        start(ctx, slot, job);
    }
}

/// A fire: runs now, or per the overlap policy when a run is going.
fn fire(ctx: &Arc<Ctx>, slot: &Arc<Slot>, job: Job) {
    if ctx.stopping() {
        return;
    }
    let name = job.pipeline.name.clone();
    let fire = job.fire.with_timezone(&job.pipeline.timezone).to_rfc3339();
    let mut st = lock(&slot.state);
    if !st.busy {
        st.busy = true;
        drop(st);
        start(ctx, slot, job);
        return;
    }
    match job.pipeline.scheduling.overlap {
        Overlap::Skip => {
            drop(st);
            tracing::info!(pipeline = %name, %fire, "fire skipped: the previous run is still going (overlap: skip)");
            ctx.shared.metrics.skipped(&name);
        }
        Overlap::Queue if st.waiting.is_empty() => {
            st.waiting.push_back(job);
            drop(st);
            tracing::info!(pipeline = %name, %fire, "fire queued behind the run still going (overlap: queue)");
        }
        Overlap::Queue => {
            drop(st);
            tracing::info!(pipeline = %name, %fire, "fire skipped: a run is going and one already waits (overlap: queue)");
            ctx.shared.metrics.skipped(&name);
        }
    }
}

fn start(ctx: &Arc<Ctx>, slot: &Arc<Slot>, job: Job) {
    ctx.active.fetch_add(1, Ordering::SeqCst);
    tokio::spawn(drive(ctx.clone(), slot.clone(), job));
}

/// Runs `job` with its retries, then whatever waits in the slot.
async fn drive(ctx: Arc<Ctx>, slot: Arc<Slot>, job: Job) {
    let mut job = Some(job);
    while let Some(j) = job {
        with_retries(&ctx, &slot, &j).await;
        job = {
            let mut st = lock(&slot.state);
            if ctx.stopping() {
                if !st.waiting.is_empty() {
                    tracing::info!(pipeline = %j.pipeline.name, dropped = st.waiting.len(), "shutting down: waiting fires dropped");
                }
                st.waiting.clear();
            }
            let next = st.waiting.pop_front();
            if next.is_none() {
                st.busy = false;
            }
            next
        };
    }
    ctx.done();
}

/// How a run ended.
#[derive(PartialEq)]
enum Ended {
    Published,
    Failed,
    Cancelled,
}

async fn with_retries(ctx: &Arc<Ctx>, slot: &Slot, job: &Job) {
    let scheduling = &job.pipeline.scheduling;
    let mut stop = ctx.stop.subscribe();
    let mut generation = slot.generation.subscribe();
    let started = *generation.borrow_and_update();
    for attempt in 0..=scheduling.retries {
        let trigger = if attempt == 0 {
            job.trigger
        } else {
            let wait = fires::backoff(scheduling.retry_delay, attempt);
            tracing::info!(pipeline = %job.pipeline.name, attempt, of = scheduling.retries, wait_s = wait.as_secs_f64(), "retrying the failed run");
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = until_true(&mut stop) => {}
                _ = generation.changed() => {}
            }
            if *slot.generation.borrow() != started {
                tracing::info!(pipeline = %job.pipeline.name, "pipeline file removed: retry not started");
                return;
            }
            Trigger::Retry
        };
        if ctx.stopping() {
            if attempt > 0 {
                tracing::info!(pipeline = %job.pipeline.name, "shutting down: retry not started");
            }
            return;
        }
        match run_once(ctx, job, trigger).await {
            Ended::Failed => continue,
            Ended::Published | Ended::Cancelled => return,
        }
    }
    if scheduling.retries > 0 {
        tracing::error!(pipeline = %job.pipeline.name, retries = scheduling.retries, "the run failed after every retry");
    }
}

/// One run of a fire; dropped (and recorded `cancelled`) when the grace period ends.
async fn run_once(ctx: &Arc<Ctx>, job: &Job, trigger: Trigger) -> Ended {
    let pipeline = &job.pipeline;
    let started_at = Utc::now();
    let run_id = new_run_id(started_at);
    let as_of = fires::as_of(job.fire, pipeline.timezone);
    let options = RunOptions {
        as_of: Some(as_of),
        output: None,
        trigger,
        run_id: Some(run_id.clone()),
        ..RunOptions::default()
    };
    tracing::info!(
        pipeline = %pipeline.name,
        %run_id,
        fire = %job.fire.with_timezone(&pipeline.timezone).to_rfc3339(),
        trigger = trigger.as_str(),
        %as_of,
        "fired"
    );
    let metrics = &ctx.shared.metrics;
    metrics.started(&pipeline.name);
    let clock = Instant::now();
    let mut cancel = ctx.cancel.subscribe();
    // A panic inside a run fails that run, not the daemon.
    let guarded = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(crate::run(
        pipeline, &options,
    )));
    let result = tokio::select! {
        r = guarded => Some(r.unwrap_or_else(|_| {
            let error = "the run panicked (a bug in kpiforge; please report it)";
            record_ended(pipeline, &run_id, as_of, trigger, started_at, "failed", error);
            Err(Error::Usage(error.into()))
        })),
        _ = until_true(&mut cancel) => None,
    };
    let mut finished = Finished {
        pipeline: &pipeline.name,
        status: "cancelled",
        seconds: clock.elapsed().as_secs_f64(),
        finished_at: Utc::now().timestamp_millis() as f64 / 1000.0,
        checks_failed: 0,
        rows_read: Vec::new(),
    };
    let ended = match &result {
        None => {
            record_ended(
                pipeline,
                &run_id,
                as_of,
                trigger,
                started_at,
                "cancelled",
                "cancelled: the scheduler shut down and the grace period ended",
            );
            tracing::warn!(pipeline = %pipeline.name, %run_id, "run cancelled: the grace period ended; nothing of it was published");
            Ended::Cancelled
        }
        Some(Ok(report)) => {
            finished.status = if report.quality.failed() {
                "quality_failed"
            } else {
                "succeeded"
            };
            finished.checks_failed = report.quality.count(Outcome::Failed) as u64;
            finished.rows_read = report
                .sources
                .iter()
                .filter_map(|s| Some((s.name.clone(), s.rows?)))
                .collect();
            Ended::Published
        }
        Some(Err(e)) => {
            finished.status = "failed";
            tracing::error!(pipeline = %pipeline.name, %run_id, error = %crate::config::env::redact(&e.to_string()), "run failed");
            Ended::Failed
        }
    };
    metrics.finished(finished);
    ended
}

/// Records a run the scheduler ended (dropped: `cancelled`; panicked:
/// `failed`) under its run id.
fn record_ended(
    pipeline: &Pipeline,
    run_id: &str,
    as_of: chrono::NaiveDate,
    trigger: Trigger,
    started_at: DateTime<Utc>,
    status: &str,
    error: &str,
) {
    let result = StateStore::open(&pipeline.state).and_then(|store| {
        let recorded = store
            .runs(&RunFilter {
                pipeline: Some(pipeline.name.clone()),
                status: None,
                limit: Some(1000),
            })?
            .into_iter()
            .find(|r| r.run_id == run_id);
        let mut entry = match recorded {
            // It ended on its own after all.
            Some(r) if r.status != "running" => return Ok(()),
            Some(r) => r,
            None => RunEntry::started(pipeline, run_id, as_of, trigger, started_at),
        };
        entry.status = status.into();
        entry.finished_at = Some(Utc::now().to_rfc3339());
        entry.error = Some(error.into());
        store.record_run(&entry)
    });
    if let Err(e) = result {
        tracing::error!(pipeline = %pipeline.name, %run_id, error = %e, "the run's end could not be recorded");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn project() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        for sub in ["pipelines", "sql", "data"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("data/t.csv"), "a\n1\n").unwrap();
        let sql = dir.path().join("sql/k.sql");
        std::fs::write(&sql, "SELECT DATE '2026-01-01' AS period, 1.0 AS value").unwrap();
        let file = dir.path().join("pipelines/p.yaml");
        let yaml = "name: p\noutput: out\nsources:\n  t: {file: data/t.csv}\n\
                    kpis:\n  - {id: k, sql: sql/k.sql, grain: day}\n";
        std::fs::write(&file, yaml).unwrap();
        (dir, file, sql)
    }

    #[test]
    fn a_sql_file_edited_while_loading_is_loaded_again() {
        let (_dir, file, sql) = project();
        // A first load knows no SQL files yet: loaded again with its own stamped.
        let loads = Cell::new(0);
        let counted = |f: &Path| {
            loads.set(loads.get() + 1);
            crate::config::load(f)
        };
        let (pipeline, stamped) = load_stamped(&file, &[], counted).unwrap();
        let known = pipeline.sql_files();
        assert_eq!((loads.get(), &known), (2, &vec![sql.clone()]));
        // Nothing edited: the next scan finds the same stamp, and loads nothing.
        assert_eq!(stamped, stamp(&file, &known));
        loads.set(0);
        let (_, again) = load_stamped(&file, &known, counted).unwrap();
        assert_eq!((loads.get(), again), (1, stamped));

        // The KPI's SQL edited just after the load read it: the stamp is the
        // one from before, so the next scan sees the edit and loads it.
        let editing = |f: &Path| {
            let loaded = crate::config::load(f);
            std::fs::write(&sql, "SELECT DATE '2026-01-01' AS period, 42.0 AS value").unwrap();
            loaded
        };
        let (_, stamped) = load_stamped(&file, &known, editing).unwrap();
        assert_ne!(stamped, stamp(&file, &known));

        // The list of SQL files changing at each load: a stamp no scan matches.
        let loads = Cell::new(0);
        let renaming = |f: &Path| {
            loads.set(loads.get() + 1);
            let sql = format!("sql/k{}.sql", loads.get());
            let text = std::fs::read_to_string(&known[0]).unwrap();
            std::fs::write(f.parent().unwrap().parent().unwrap().join(&sql), text).unwrap();
            let yaml = format!(
                "name: p\noutput: out\nsources:\n  t: {{file: data/t.csv}}\n\
                 kpis:\n  - {{id: k, sql: {sql}, grain: day}}\n"
            );
            std::fs::write(f, yaml).unwrap();
            crate::config::load(f)
        };
        let (_, stamped) = load_stamped(&file, &known, renaming).unwrap();
        assert_eq!((loads.get(), stamped), (2, Stamp::new()));
    }
}
