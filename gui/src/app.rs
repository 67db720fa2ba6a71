//! The window: a scrolling grid of thumbnails loaded by bgtask.
//!
//! Each item has two tasks: "fetch" (make sure the source image is there,
//! then read it) and "decode" (decode and scale down), the second after the
//! first; the fetch's `Kwargs` result (the file's bytes) is merged into the
//! decode's kwargs. Fetches mostly wait, decodes need a core: the "decode"
//! group is limited (`set_group_limit`) to one worker fewer than there are
//! cores, so that the UI thread always has one.
//!
//! Items within [`PREFETCH_SCREENS`] screens of the view get tasks: the
//! rows in view at [`VISIBLE_PRIORITY`], the rest of that window at
//! [`PREFETCH_PRIORITY`], nearest rows first. As the view moves, queued
//! items that come into view are raised with `set_priority`, those that
//! leave it are lowered, and items that end up more than [`STOP_SCREENS`]
//! screens away before they loaded are stopped with `stop_task` (and added
//! again if they come back).
//!
//! Every frame the UI thread drains the events that arrived, turns finished
//! thumbnails into textures (the only pixel work it does), and paints only
//! the rows it shows. Between frames it sleeps: the manager's notifier calls
//! `request_repaint` when a worker queues an event.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bgtask::{Event, Group, Kwargs, Subscription, TaskId, TaskManager};
use eframe::egui::{self, Color32, FontId, Pos2, Rect, Vec2};

use crate::frames::{FrameClock, Samples};
use crate::images::{self, ThreadProbe, Thumbnail, THUMB_SIZE};

/// Priority of the tasks of items in view.
const VISIBLE_PRIORITY: i32 = 10;
/// Priority of the tasks of items near the view (prefetch).
const PREFETCH_PRIORITY: i32 = 0;
/// How many screens above and below the view have their items loaded.
const PREFETCH_SCREENS: usize = 2;
/// Unloaded items farther than this many screens from the view are
/// stopped. More than [`PREFETCH_SCREENS`], so that an item at the edge of
/// the window is not stopped and added again as the view moves a little.
const STOP_SCREENS: usize = 3;
/// One grid cell: the thumbnail area and a caption below it.
const CELL: Vec2 = Vec2::new(THUMB_SIZE.0 as f32 + 8.0, THUMB_SIZE.1 as f32 + 26.0);
/// The thumbnail area at the top of a cell.
const IMAGE_AREA: Vec2 = Vec2::new(CELL.x, THUMB_SIZE.1 as f32 + 8.0);
/// How many frames to show after everything loaded, before saying so.
const SETTLE_FRAMES: usize = 3;
/// How far `--auto-scroll` scrolls up per frame, in points.
const SCROLL_STEP: f32 = 48.0;

/// What the command line asked for.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Number of items in the grid.
    pub(crate) items: usize,
    /// Simulated latency of each fetch.
    pub(crate) latency: Duration,
    /// Worker threads.
    pub(crate) threads: usize,
    /// At most this many decode tasks at once (a group limit).
    pub(crate) decode_threads: usize,
    /// Where the source images are.
    pub(crate) dir: PathBuf,
    /// Scroll by itself: a page down, a jump to the bottom, then smoothly
    /// up to the top.
    pub(crate) auto_scroll: bool,
    /// Close once everything is loaded and shown.
    pub(crate) auto_exit: bool,
    /// With `auto_exit`: stay open until standard input gives a line or
    /// ends (a screenshot can be taken meanwhile).
    pub(crate) hold_until_stdin: bool,
    /// Where to write the report, besides standard output.
    pub(crate) report: Option<PathBuf>,
    /// Where to write one CSV line per frame.
    pub(crate) frame_log: Option<PathBuf>,
}

/// One grid item.
enum Slot {
    /// No task: never wanted yet, or stopped (`stopped`).
    Idle { stopped: bool },
    /// Its tasks are live.
    Pending(Pending),
    /// On screen.
    Loaded(egui::TextureHandle),
    /// A task failed (the message went to standard error).
    Failed,
}

struct Pending {
    fetch: TaskId,
    decode: TaskId,
    priority: i32,
    /// The latest progress report of either task.
    progress: Option<(f32, String)>,
    /// Since when the item has been in view, if it is.
    visible_since: Option<Instant>,
}

#[derive(Clone, Copy)]
enum Step {
    Fetch,
    Decode,
}

/// The self-scrolling tour of `--auto-scroll`. Each step waits until every
/// item in view is loaded, so that every item is loaded by the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sweep {
    Off,
    /// At the top, waiting for the first screen.
    Top,
    /// One screen down: the prefetched items there come into view.
    PageDown,
    /// Jumped to the bottom (as a drag of the scroll bar would).
    Bottom,
    /// Scrolling up smoothly, [`SCROLL_STEP`] points a frame, pausing
    /// wherever the view is not loaded yet.
    Up,
    Done,
}

/// One frame, for `--frame-log`.
struct FrameRecord {
    /// Since the app started.
    start: Duration,
    /// In `ui()`.
    ui: Duration,
    /// eframe's CPU time for the whole frame (known one frame later).
    cpu: Option<Duration>,
    loading: bool,
    events: usize,
    uploads: usize,
    pending: usize,
    offset: f32,
}

#[derive(Default)]
struct Counters {
    added: usize,
    readded: usize,
    raised: usize,
    lowered: usize,
    stopped_items: usize,
    stopped_tasks: usize,
    cancelled_tasks: usize,
}

pub(crate) struct ThumbnailsApp {
    opts: Options,
    manager: TaskManager,
    events: Subscription,
    probe: Arc<ThreadProbe>,
    fetch_group: Group,
    decode_group: Group,
    slots: Vec<Slot>,
    /// Live task → (item, step).
    tasks: HashMap<TaskId, (usize, Step)>,
    loaded: usize,
    failed: usize,
    pending: usize,
    cancelled: bool,
    counters: Counters,
    /// Columns, rows in view and rows a screen holds, from the last layout.
    columns: usize,
    visible_rows: Range<usize>,
    screen_rows: usize,
    /// Scroll state from the last layout, and a requested offset.
    offset: f32,
    max_offset: f32,
    view_height: f32,
    scroll_to: Option<f32>,
    sweep: Sweep,
    started: Instant,
    /// Frame times, while loading and not.
    clock: FrameClock,
    visible_waits: Samples,
    /// One record per frame, for `--frame-log`.
    frame_log: Vec<FrameRecord>,
    /// Events drained and textures made in this frame.
    frame_events: usize,
    frame_uploads: usize,
    finished: Option<Instant>,
    frames_since_finished: usize,
    quit: Arc<AtomicBool>,
    reported: bool,
}

impl ThumbnailsApp {
    /// Starts the manager and wires its notifier to `ctx`. `quit` is set
    /// (from another thread) when standard input asks to close.
    pub(crate) fn new(
        ctx: &egui::Context,
        opts: Options,
        probe: Arc<ThreadProbe>,
        quit: Arc<AtomicBool>,
    ) -> Result<Self, bgtask::Error> {
        let manager = TaskManager::builder()
            .max_threads(opts.threads)
            .thread_name("thumbnails")
            .start_processing(true)
            .build()?;
        let events = manager.subscribe();
        // Fetches mostly wait; decodes need a core. Limiting the decodes
        // leaves the UI thread a core of its own.
        let (fetch_group, decode_group) = (Group::from("fetch"), Group::from("decode"));
        manager.set_group_limit(&decode_group, opts.decode_threads)?;
        // A worker that queues an event into an empty queue wakes the UI.
        let waker = ctx.clone();
        manager.set_notifier(move || waker.request_repaint());
        let sweep = if opts.auto_scroll {
            Sweep::Top
        } else {
            Sweep::Off
        };
        Ok(ThumbnailsApp {
            slots: (0..opts.items)
                .map(|_| Slot::Idle { stopped: false })
                .collect(),
            opts,
            manager,
            events,
            probe,
            fetch_group,
            decode_group,
            tasks: HashMap::new(),
            loaded: 0,
            failed: 0,
            pending: 0,
            cancelled: false,
            counters: Counters::default(),
            columns: 0,
            visible_rows: 0..0,
            screen_rows: 1,
            offset: 0.0,
            max_offset: 0.0,
            view_height: 0.0,
            scroll_to: None,
            sweep,
            started: Instant::now(),
            clock: FrameClock::default(),
            visible_waits: Samples::default(),
            frame_log: Vec::new(),
            frame_events: 0,
            frame_uploads: 0,
            finished: None,
            frames_since_finished: 0,
            quit,
            reported: false,
        })
    }

    fn is_loading(&self) -> bool {
        self.pending > 0
    }

    // ---- events -------------------------------------------------------

    fn drain_events(&mut self, ctx: &egui::Context) {
        let events: Vec<Event> = self.events.try_iter().collect();
        self.frame_events = events.len();
        self.frame_uploads = 0;
        for event in events {
            self.on_event(ctx, event);
        }
    }

    fn on_event(&mut self, ctx: &egui::Context, event: Event) {
        match event {
            Event::Completed { id, result, .. } => match self.tasks.remove(&id) {
                Some((index, Step::Decode)) => {
                    let Some(thumb) = result.downcast_ref::<Thumbnail>() else {
                        return self.fail(index, "the decode task returned no thumbnail".into());
                    };
                    // The one thing done with pixels on the UI thread: the upload.
                    let image = egui::ColorImage::from_rgba_unmultiplied(thumb.size, &thumb.rgba);
                    let texture = ctx.load_texture(
                        format!("thumb-{index}"),
                        image,
                        egui::TextureOptions::LINEAR,
                    );
                    if let Slot::Pending(p) = &self.slots[index] {
                        if let Some(since) = p.visible_since {
                            self.visible_waits.push(since.elapsed());
                        }
                    }
                    self.slots[index] = Slot::Loaded(texture);
                    self.frame_uploads += 1;
                    self.loaded += 1;
                    self.pending -= 1;
                }
                Some((index, Step::Fetch)) => {
                    if let Slot::Pending(p) = &mut self.slots[index] {
                        p.progress = Some((0.5, "fetched".into()));
                    }
                }
                None => {}
            },
            Event::Failed { id, message, .. } => {
                // The decode task fails with its fetch: handle the item once.
                if let Some((index, Step::Decode)) = self.tasks.remove(&id) {
                    self.fail(index, message);
                }
            }
            Event::Progress {
                id,
                fraction,
                message,
                ..
            } => {
                if let Some(&(index, _)) = self.tasks.get(&id) {
                    if let Slot::Pending(p) = &mut self.slots[index] {
                        p.progress = Some((fraction, message));
                    }
                }
            }
            _ => {}
        }
    }

    fn fail(&mut self, index: usize, message: String) {
        if let Slot::Pending(p) = &self.slots[index] {
            self.tasks.remove(&p.fetch);
            self.tasks.remove(&p.decode);
            self.pending -= 1;
        }
        eprintln!("bgtask-gui: item {index} failed: {message}");
        self.slots[index] = Slot::Failed;
        self.failed += 1;
    }

    // ---- scheduling ---------------------------------------------------

    /// Adds the fetch → decode chain of item `index`.
    fn add(&mut self, index: usize, priority: i32, visible: bool) {
        let kwargs = Kwargs::new()
            .with("index", index)
            .with("path", images::source_path(&self.opts.dir, index));
        let (probe, latency) = (Arc::clone(&self.probe), self.opts.latency);
        let fetch = self
            .manager
            .task()
            .priority(priority)
            .group(self.fetch_group.clone())
            .kwargs(kwargs)
            .spawn(move |ctx| images::fetch(ctx, &probe, latency));
        let probe = Arc::clone(&self.probe);
        let decode = fetch.and_then(|fetch| {
            let decode = self
                .manager
                .task()
                .priority(priority)
                .group(self.decode_group.clone())
                .after([&fetch])
                .spawn(move |ctx| images::decode(ctx, &probe))?;
            Ok((fetch.id(), decode.id()))
        });
        match decode {
            Ok((fetch, decode)) => {
                self.tasks.insert(fetch, (index, Step::Fetch));
                self.tasks.insert(decode, (index, Step::Decode));
                if matches!(self.slots[index], Slot::Idle { stopped: true }) {
                    self.counters.readded += 1;
                }
                self.counters.added += 1;
                self.pending += 1;
                self.slots[index] = Slot::Pending(Pending {
                    fetch,
                    decode,
                    priority,
                    progress: None,
                    visible_since: visible.then(Instant::now),
                });
            }
            Err(err) => {
                eprintln!("bgtask-gui: cannot add the tasks of item {index}: {err}");
                self.slots[index] = Slot::Failed;
                self.failed += 1;
            }
        }
    }

    /// Moves item `index`'s pending tasks to `priority`.
    fn reprioritise(&mut self, index: usize, priority: i32, visible: bool) {
        let Slot::Pending(p) = &mut self.slots[index] else {
            return;
        };
        if visible && p.visible_since.is_none() {
            p.visible_since = Some(Instant::now());
        } else if !visible {
            p.visible_since = None;
        }
        if p.priority == priority {
            return;
        }
        // Either may have started already (then `set_priority` is false).
        let fetch = self.manager.set_priority(p.fetch, priority);
        let decode = self.manager.set_priority(p.decode, priority);
        p.priority = priority;
        if fetch || decode {
            if priority > PREFETCH_PRIORITY {
                self.counters.raised += 1;
            } else {
                self.counters.lowered += 1;
            }
        }
    }

    /// Stops item `index`'s tasks: the decode task and, upstream, its fetch.
    fn stop(&mut self, index: usize) {
        let Slot::Pending(p) = &self.slots[index] else {
            return;
        };
        self.counters.stopped_tasks += self.manager.stop_task(p.decode, true, false);
        self.counters.stopped_items += 1;
        self.tasks.remove(&p.fetch);
        self.tasks.remove(&p.decode);
        self.pending -= 1;
        self.slots[index] = Slot::Idle { stopped: true };
    }

    /// Brings the tasks in line with the view: items in view at
    /// `VISIBLE_PRIORITY`, the prefetch window at `PREFETCH_PRIORITY`
    /// (nearest rows added first), unloaded items beyond it stopped.
    fn schedule(&mut self) {
        if self.cancelled || self.columns == 0 {
            return;
        }
        let total_rows = self.slots.len().div_ceil(self.columns);
        let view = self.visible_rows.clone();
        let around = |screens: usize| {
            let reach = screens * self.screen_rows;
            view.start.saturating_sub(reach)..(view.end + reach).min(total_rows)
        };
        let (window, keep) = (around(PREFETCH_SCREENS), around(STOP_SCREENS));
        let reach = PREFETCH_SCREENS * self.screen_rows;
        // Rows in view first, then outwards, one row below and one above.
        let mut rows: Vec<usize> = view.clone().collect();
        for d in 1..=reach {
            rows.extend(Some(view.end + d - 1).filter(|r| *r < total_rows));
            rows.extend(view.start.checked_sub(d));
        }
        for row in rows {
            let visible = view.contains(&row);
            let priority = if visible {
                VISIBLE_PRIORITY
            } else {
                PREFETCH_PRIORITY
            };
            for index in row * self.columns..((row + 1) * self.columns).min(self.slots.len()) {
                match self.slots[index] {
                    Slot::Idle { .. } => self.add(index, priority, visible),
                    Slot::Pending(_) => self.reprioritise(index, priority, visible),
                    Slot::Loaded(_) | Slot::Failed => {}
                }
            }
        }
        for index in 0..self.slots.len() {
            let row = index / self.columns;
            if !keep.contains(&row) {
                self.stop(index);
            } else if !window.contains(&row) {
                self.reprioritise(index, PREFETCH_PRIORITY, false);
            }
        }
    }

    fn cancel(&mut self) {
        self.counters.cancelled_tasks += self.manager.stop_all_tasks();
        for slot in &mut self.slots {
            if matches!(slot, Slot::Pending(_)) {
                *slot = Slot::Idle { stopped: true };
            }
        }
        self.tasks.clear();
        self.pending = 0;
        self.cancelled = true;
    }

    // ---- the self-scrolling tour ----------------------------------------

    fn view_is_loaded(&self) -> bool {
        let indices = self.visible_rows.start * self.columns
            ..(self.visible_rows.end * self.columns).min(self.slots.len());
        !indices.is_empty()
            && self.slots[indices]
                .iter()
                .all(|s| matches!(s, Slot::Loaded(_) | Slot::Failed))
    }

    fn advance_sweep(&mut self, ctx: &egui::Context) {
        if matches!(self.sweep, Sweep::Off | Sweep::Done) || !self.view_is_loaded() {
            return;
        }
        self.sweep = match self.sweep {
            Sweep::Top => {
                self.scroll_to = Some(self.offset + self.view_height);
                Sweep::PageDown
            }
            Sweep::PageDown => {
                self.scroll_to = Some(self.max_offset);
                Sweep::Bottom
            }
            Sweep::Bottom | Sweep::Up if self.offset > 0.5 => {
                self.scroll_to = Some((self.offset - SCROLL_STEP).max(0.0));
                Sweep::Up
            }
            _ => Sweep::Done,
        };
        ctx.request_repaint();
    }

    // ---- the end --------------------------------------------------------

    fn check_finished(&mut self, ctx: &egui::Context) {
        let done = self.loaded + self.failed == self.slots.len()
            && matches!(self.sweep, Sweep::Off | Sweep::Done);
        if !done {
            return;
        }
        let finished = *self.finished.get_or_insert_with(Instant::now);
        if !self.reported {
            // A few frames with everything on screen before saying so.
            self.frames_since_finished += 1;
            if self.frames_since_finished < SETTLE_FRAMES {
                ctx.request_repaint();
                return;
            }
            self.publish_report(Some(finished - self.started));
        }
        if self.opts.auto_exit && (!self.opts.hold_until_stdin || self.quit.load(Ordering::Relaxed))
        {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
    }

    /// Prints the report and writes the files asked for; `took` is the
    /// time to load everything, `None` if not everything loaded.
    fn publish_report(&mut self, took: Option<Duration>) {
        let report = self.make_report(took);
        print!("{report}");
        if let Some(path) = &self.opts.report {
            write_or_complain(path, &report);
        }
        if let Some(path) = &self.opts.frame_log {
            write_or_complain(path, &self.frame_log_csv());
        }
        self.reported = true;
    }

    fn make_report(&self, took: Option<Duration>) -> String {
        let c = &self.counters;
        let mut r = String::new();
        let none = || "no samples".to_string();
        let summary = |s: &Samples| s.summary().map_or_else(none, |s| s.to_string());
        let _ = writeln!(
            r,
            "bgtask-gui: tasks run: {}, on the UI thread: {}",
            self.probe.tasks_run.load(Ordering::Relaxed),
            self.probe.on_ui_thread.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            r,
            "bgtask-gui: scheduling: {} items added ({} again after a stop), {} raised and {} lowered with set_priority, {} stopped with stop_task ({} tasks), {} tasks cancelled with stop_all_tasks",
            c.added, c.readded, c.raised, c.lowered, c.stopped_items, c.stopped_tasks, c.cancelled_tasks
        );
        let (loading, idle) = (&self.clock.loading, &self.clock.idle);
        let _ = writeln!(
            r,
            "bgtask-gui: frames: {} while loading, {} with nothing loading",
            loading.ui.len(),
            idle.ui.len()
        );
        let lines = [
            (
                "frame time",
                "ui + tessellation + painting, without the swap",
                &loading.frame,
                &idle.frame,
            ),
            (
                "frame interval",
                "scrolling frames, start to start, swap and software rendering included",
                &loading.interval,
                &idle.interval,
            ),
            (
                "ui() time",
                "drain events, upload textures, lay out",
                &loading.ui,
                &idle.ui,
            ),
        ];
        for (what, meaning, while_loading, baseline) in lines {
            let _ = writeln!(
                r,
                "bgtask-gui: {what} while loading ({meaning}): {}",
                summary(while_loading)
            );
            let _ = writeln!(
                r,
                "bgtask-gui: {what} with nothing loading: {}",
                summary(baseline)
            );
        }
        let _ = writeln!(
            r,
            "bgtask-gui: wait from coming into view to on screen: {}",
            summary(&self.visible_waits)
        );
        // The last line, which scripts wait for.
        let (loaded, total, failed) = (self.loaded, self.slots.len(), self.failed);
        let _ = match took {
            Some(took) => writeln!(
                r,
                "bgtask-gui: all loaded: {loaded}/{total} thumbnails ({failed} failed) in {:.2} s",
                took.as_secs_f64()
            ),
            None => writeln!(
                r,
                "bgtask-gui: closed with {loaded}/{total} thumbnails loaded ({failed} failed) after {:.2} s",
                self.started.elapsed().as_secs_f64()
            ),
        };
        r
    }

    fn frame_log_csv(&self) -> String {
        let mut csv =
            String::from("start_ms,ui_ms,cpu_ms,loading,events,uploads,pending,scroll_offset\n");
        for f in &self.frame_log {
            let _ = writeln!(
                csv,
                "{:.3},{:.3},{},{},{},{},{},{:.1}",
                f.start.as_secs_f64() * 1e3,
                f.ui.as_secs_f64() * 1e3,
                f.cpu
                    .map_or_else(String::new, |c| format!("{:.3}", c.as_secs_f64() * 1e3)),
                u8::from(f.loading),
                f.events,
                f.uploads,
                f.pending,
                f.offset
            );
        }
        csv
    }

    // ---- drawing --------------------------------------------------------

    fn controls(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.heading("bgtask thumbnails");
            let total = self.slots.len();
            let fraction = if total == 0 {
                1.0
            } else {
                self.loaded as f32 / total as f32
            };
            ui.add(
                egui::ProgressBar::new(fraction)
                    .desired_width(420.0)
                    .text(format!("{} / {total} loaded", self.loaded)),
            );
            let (label, hint) = if self.cancelled {
                ("Resume", "Load what is in view again")
            } else {
                (
                    "Cancel",
                    "stop_all_tasks(): drop every queued and running load",
                )
            };
            if ui.button(label).on_hover_text(hint).clicked() {
                if self.cancelled {
                    self.cancelled = false;
                } else {
                    self.cancel();
                }
            }
        });
        let c = &self.counters;
        let p99 = self.clock.loading.frame.summary().map_or_else(
            || "-".into(),
            |s| format!("{:.1} ms", s.p99.as_secs_f64() * 1e3),
        );
        ui.label(format!(
            "pending {} · raised {} · stopped {} · cancelled {} · re-added {} · tasks on the UI thread: {} · frame time p99 {p99}",
            self.pending,
            c.raised,
            c.stopped_items,
            c.cancelled_tasks,
            c.readded,
            self.probe.on_ui_thread.load(Ordering::Relaxed),
        ));
    }

    fn grid(&mut self, ui: &mut egui::Ui) {
        let mut area = egui::ScrollArea::vertical().auto_shrink(false);
        if let Some(y) = self.scroll_to.take() {
            area = area.vertical_scroll_offset(y);
        }
        let n = self.slots.len();
        let out = area.show_viewport(ui, |ui, viewport| {
            let gap = ui.spacing().item_spacing;
            // Keep clear of the scroll bar, which floats over the content.
            let width = ui.available_width() - ui.spacing().scroll.bar_width;
            let columns = ((width + gap.x) / (CELL.x + gap.x)).floor().max(1.0) as usize;
            let rows = n.div_ceil(columns);
            let row_height = CELL.y + gap.y;
            ui.set_height((rows as f32 * row_height - gap.y).max(0.0));
            ui.set_width(ui.available_width());
            let first = ((viewport.min.y / row_height).floor().max(0.0) as usize).min(rows);
            let end = ((viewport.max.y / row_height).ceil().max(0.0) as usize).clamp(first, rows);
            let origin = ui.max_rect().min;
            // Spread the columns over the whole width.
            let gap_x = if columns > 1 {
                (width - columns as f32 * CELL.x) / (columns - 1) as f32
            } else {
                gap.x
            };
            let painter = ui.painter();
            for row in first..end {
                for col in 0..columns {
                    let index = row * columns + col;
                    if index >= n {
                        break;
                    }
                    let min =
                        origin + Vec2::new(col as f32 * (CELL.x + gap_x), row as f32 * row_height);
                    self.paint_cell(painter, Rect::from_min_size(min, CELL), index);
                }
            }
            (columns, first..end)
        });
        (self.columns, self.visible_rows) = out.inner;
        self.offset = out.state.clamped_offset().y;
        self.view_height = out.inner_rect.height();
        self.max_offset = (out.content_size.y - self.view_height).max(0.0);
        let row_height = CELL.y + ui.spacing().item_spacing.y;
        self.screen_rows = ((self.view_height / row_height).ceil() as usize).max(1);
    }

    fn paint_cell(&self, painter: &egui::Painter, cell: Rect, index: usize) {
        let area = Rect::from_min_size(cell.min, IMAGE_AREA);
        let small = FontId::proportional(12.0);
        let (background, note) = match &self.slots[index] {
            Slot::Loaded(_) => (Color32::from_gray(28), None),
            Slot::Pending(p) if p.priority >= VISIBLE_PRIORITY => {
                (Color32::from_gray(48), Some("next"))
            }
            Slot::Pending(_) => (Color32::from_gray(40), Some("queued")),
            Slot::Idle { stopped: true } => (Color32::from_gray(34), Some("stopped")),
            Slot::Idle { stopped: false } => (Color32::from_gray(34), None),
            Slot::Failed => (Color32::from_rgb(90, 30, 30), Some("failed")),
        };
        painter.rect_filled(area, 4.0, background);
        match &self.slots[index] {
            Slot::Loaded(texture) => {
                let size = texture.size_vec2();
                let rect = Rect::from_center_size(area.center(), size);
                let uv = Rect::from_min_max(Pos2::ZERO, Pos2::new(1.0, 1.0));
                painter.image(texture.id(), rect, uv, Color32::WHITE);
            }
            Slot::Pending(Pending {
                progress: Some((fraction, message)),
                ..
            }) => {
                let bar = Rect::from_min_size(
                    area.left_bottom() + Vec2::new(8.0, -14.0),
                    Vec2::new((area.width() - 16.0) * fraction.clamp(0.0, 1.0), 4.0),
                );
                painter.rect_filled(bar, 2.0, Color32::from_rgb(90, 150, 230));
                painter.text(
                    area.center(),
                    egui::Align2::CENTER_CENTER,
                    message,
                    small.clone(),
                    Color32::GRAY,
                );
            }
            _ => {
                if let Some(note) = note {
                    painter.text(
                        area.center(),
                        egui::Align2::CENTER_CENTER,
                        note,
                        small.clone(),
                        Color32::GRAY,
                    );
                }
            }
        }
        painter.text(
            Pos2::new(area.center().x, area.bottom() + 9.0),
            egui::Align2::CENTER_CENTER,
            format!("#{index:03}"),
            small,
            Color32::from_gray(170),
        );
    }
}

impl eframe::App for ThumbnailsApp {
    fn ui(&mut self, ui: &mut egui::Ui, frame: &mut eframe::Frame) {
        let start = Instant::now();
        // eframe's figure is for the previous frame.
        let cpu = frame.info().cpu_usage.map(Duration::from_secs_f32);
        self.clock.begin(start, cpu);
        if let (Some(cpu), Some(previous)) = (cpu, self.frame_log.last_mut()) {
            previous.cpu = Some(cpu);
        }
        let was_loading = self.is_loading();
        let ctx = ui.ctx().clone();
        self.drain_events(&ctx);
        egui::Panel::top("controls").show(ui, |ui| self.controls(ui));
        egui::CentralPanel::default_margins().show(ui, |ui| self.grid(ui));
        self.schedule();
        self.advance_sweep(&ctx);
        self.check_finished(&ctx);
        let loading = was_loading || self.is_loading();
        // A requested scroll is applied in the next frame, at once.
        let animating = self.scroll_to.is_some();
        if self.opts.frame_log.is_some() {
            self.frame_log.push(FrameRecord {
                start: start - self.started,
                ui: start.elapsed(),
                cpu: None,
                loading,
                events: self.frame_events,
                uploads: self.frame_uploads,
                pending: self.pending,
                offset: self.offset,
            });
        }
        self.clock.end(start, loading, animating);
    }

    fn on_exit(&mut self, _gl: Option<&eframe::glow::Context>) {
        self.manager.shut_down();
        if !self.reported {
            self.publish_report(None);
        }
    }
}

fn write_or_complain(path: &std::path::Path, text: &str) {
    if let Err(err) = std::fs::write(path, text) {
        eprintln!("bgtask-gui: cannot write {}: {err}", path.display());
    }
}
