//! Progress on a terminal: a hook the run advances at its stage boundaries, a
//! no-op unless a front end (the CLI on a terminal) installs one. It never
//! touches the data: a run's results and logs are the same with or without it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A stage of a run, as the progress display names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// One source being read (the item is its name).
    Source,
    Checks,
    Kpis,
    Publish,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Source => "source",
            Stage::Checks => "checks",
            Stage::Kpis => "KPIs",
            Stage::Publish => "publish",
        }
    }
}

/// What a run reports as it goes. Every method defaults to doing nothing.
pub trait Progress: Send + Sync {
    /// `stage` (for a source, the source `item`) started.
    fn begin(&self, _stage: Stage, _item: &str) {}
    /// `stage` ended; `ok` is false when it failed.
    fn end(&self, _stage: Stage, _item: &str, _ok: bool) {}
}

/// An optional progress hook, cheap to clone; `None` (the default) does nothing.
#[derive(Clone, Default)]
pub struct Hook(pub Option<Arc<dyn Progress>>);

impl Hook {
    pub fn new(progress: impl Progress + 'static) -> Hook {
        Hook(Some(Arc::new(progress)))
    }

    pub fn begin(&self, stage: Stage, item: &str) {
        if let Some(p) = &self.0 {
            p.begin(stage, item);
        }
    }

    pub fn end(&self, stage: Stage, item: &str, ok: bool) {
        if let Some(p) = &self.0 {
            p.end(stage, item, ok);
        }
    }
}

impl Hook {
    /// Begins `stage`; it ends when the guard drops: ok after [`StageGuard::done`],
    /// failed otherwise (an early return with an error).
    pub fn stage<'a>(&'a self, stage: Stage, item: &'a str) -> StageGuard<'a> {
        self.begin(stage, item);
        StageGuard {
            hook: self,
            stage,
            item,
            ok: false,
        }
    }
}

/// A stage in progress; see [`Hook::stage`].
pub struct StageGuard<'a> {
    hook: &'a Hook,
    stage: Stage,
    item: &'a str,
    ok: bool,
}

impl StageGuard<'_> {
    /// Ends the stage as succeeded.
    pub fn done(mut self) {
        self.ok = true;
    }
}

impl Drop for StageGuard<'_> {
    fn drop(&mut self) {
        self.hook.end(self.stage, self.item, self.ok);
    }
}

impl std::fmt::Debug for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Hook(on)"
        } else {
            "Hook(off)"
        })
    }
}

/// Whether stderr is a terminal: progress is drawn only then.
pub fn interactive() -> bool {
    std::io::IsTerminal::is_terminal(&std::io::stderr())
}

/// The bars being drawn, if any: log lines written meanwhile go through
/// [`suspend`] so they do not garble them.
static ACTIVE: Mutex<Option<MultiProgress>> = Mutex::new(None);

/// A new set of bars on stderr, registered for [`suspend`]; `None` when stderr
/// is not a terminal.
pub fn multi() -> Option<MultiProgress> {
    if !interactive() {
        return None;
    }
    let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    if let Ok(mut active) = ACTIVE.lock() {
        *active = Some(multi.clone());
    }
    Some(multi)
}

/// Runs `f` (which writes to stderr) with the bars hidden, when any are drawn.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    let active = ACTIVE.lock().ok().and_then(|a| a.clone());
    match active {
        Some(multi) => multi.suspend(f),
        None => f(),
    }
}

/// Stops routing log lines around the bars (they are finished).
pub fn clear() {
    if let Ok(mut active) = ACTIVE.lock() {
        *active = None;
    }
}

/// A spinner per stage of one run, and one line per source.
pub struct RunBars {
    multi: MultiProgress,
    bars: Mutex<HashMap<(Stage, String), ProgressBar>>,
}

impl RunBars {
    pub fn new(multi: MultiProgress) -> RunBars {
        RunBars {
            multi,
            bars: Mutex::new(HashMap::new()),
        }
    }
}

fn label(stage: Stage, item: &str) -> String {
    if item.is_empty() {
        stage.as_str().to_string()
    } else {
        format!("{} {item}", stage.as_str())
    }
}

impl Progress for RunBars {
    fn begin(&self, stage: Stage, item: &str) {
        let bar = self.multi.add(ProgressBar::new_spinner());
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        bar.set_message(label(stage, item));
        bar.enable_steady_tick(Duration::from_millis(100));
        if let Ok(mut bars) = self.bars.lock() {
            bars.insert((stage, item.to_string()), bar);
        }
    }

    fn end(&self, stage: Stage, item: &str, ok: bool) {
        let bar = self
            .bars
            .lock()
            .ok()
            .and_then(|mut b| b.remove(&(stage, item.to_string())));
        if let Some(bar) = bar {
            bar.set_style(
                ProgressStyle::with_template("{msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            let mark = if ok { "done" } else { "failed" };
            bar.finish_with_message(format!(
                "{} {mark} in {:.1}s",
                label(stage, item),
                bar.elapsed().as_secs_f64()
            ));
        }
    }
}

/// A bar over a backfill's periods; `None` off a terminal.
pub fn periods_bar(total: u64) -> Option<ProgressBar> {
    let multi = multi()?;
    let bar = multi.add(ProgressBar::new(total));
    bar.set_style(
        ProgressStyle::with_template("{bar:30} {pos}/{len} periods {elapsed} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}
