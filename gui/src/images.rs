//! The work the tasks do: make sure a source image is on disk ("fetch",
//! standing in for a download or a read from a slow network share), then
//! decode it and scale it down to a thumbnail. Both run on bgtask's worker
//! threads; the UI thread only uploads the finished pixels as a texture.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, ThreadId};
use std::time::Duration;

use bgtask::{Kwargs, TaskContext};
use image::{ImageFormat, Rgb, RgbImage};

/// Size of a source image: a small "photo".
pub(crate) const SOURCE_SIZE: (u32, u32) = (512, 384);
/// The largest thumbnail; the aspect ratio is kept.
pub(crate) const THUMB_SIZE: (u32, u32) = (128, 96);

/// A decoded thumbnail: what a decode task returns to the UI thread.
#[derive(Debug)]
pub(crate) struct Thumbnail {
    /// Width and height in pixels.
    pub(crate) size: [usize; 2],
    /// Unpremultiplied RGBA, row by row.
    pub(crate) rgba: Vec<u8>,
}

/// Shared by every task: proves that none of them runs on the UI thread.
#[derive(Debug)]
pub(crate) struct ThreadProbe {
    ui_thread: ThreadId,
    /// Task bodies run so far.
    pub(crate) tasks_run: AtomicUsize,
    /// Task bodies that ran on the UI thread (must stay 0).
    pub(crate) on_ui_thread: AtomicUsize,
}

impl ThreadProbe {
    /// A probe for the calling thread as the UI thread.
    pub(crate) fn for_current_thread() -> Arc<Self> {
        Arc::new(ThreadProbe {
            ui_thread: thread::current().id(),
            tasks_run: AtomicUsize::new(0),
            on_ui_thread: AtomicUsize::new(0),
        })
    }

    /// Called first thing in every task body.
    fn check(&self) {
        self.tasks_run.fetch_add(1, Ordering::Relaxed);
        if thread::current().id() == self.ui_thread {
            self.on_ui_thread.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Where the generated source images live.
pub(crate) fn source_dir() -> PathBuf {
    std::env::temp_dir().join("bgtask-gui-demo")
}

/// The source image of item `index`.
pub(crate) fn source_path(dir: &Path, index: usize) -> PathBuf {
    dir.join(format!("image-{index:04}.png"))
}

/// Draws the source image of item `index`: a gradient in a hue of its own
/// with a disc and stripes placed by the index, so that neighbours differ.
fn draw(index: usize) -> RgbImage {
    let (w, h) = SOURCE_SIZE;
    let hue = (index as f32 * 47.0) % 360.0;
    let base = hsv(hue, 0.65, 1.0);
    let accent = hsv((hue + 150.0) % 360.0, 0.8, 0.95);
    let cx = (0.2 + 0.6 * ((index * 7 % 11) as f32 / 10.0)) * w as f32;
    let cy = (0.25 + 0.5 * ((index * 5 % 7) as f32 / 6.0)) * h as f32;
    let radius = (0.12 + 0.1 * ((index % 3) as f32)) * h as f32;
    let stripe = 12 + (index % 4) as u32 * 6;
    RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32, y as f32);
        let shade = 0.35 + 0.65 * (1.0 - fy / h as f32);
        let mut c = base.map(|v| v * shade);
        if (x / stripe + y / stripe).is_multiple_of(2) && fy > 0.7 * h as f32 {
            c = c.map(|v| v * 0.8);
        }
        let d2 = (fx - cx).powi(2) + (fy - cy).powi(2);
        if d2 < radius * radius {
            let rim = (d2.sqrt() / radius).powi(4);
            c = accent.map(|v| v * (1.0 - 0.4 * rim));
        }
        Rgb(c.map(|v| (v.clamp(0.0, 1.0) * 255.0) as u8))
    })
}

/// HSV (hue in degrees) to RGB in 0..=1.
fn hsv(hue: f32, s: f32, v: f32) -> [f32; 3] {
    let c = v * s;
    let x = c * (1.0 - ((hue / 60.0) % 2.0 - 1.0).abs());
    let m = v - c;
    let (r, g, b) = match hue as u32 / 60 {
        0 => (c, x, 0.0),
        1 => (x, c, 0.0),
        2 => (0.0, c, x),
        3 => (0.0, x, c),
        4 => (x, 0.0, c),
        _ => (c, 0.0, x),
    };
    [r + m, g + m, b + m]
}

/// Writes the source image of `index` unless it exists. Writes to a name of
/// its own and renames, so that a reader never sees half a file (two tasks
/// for one item may overlap when an item is stopped and re-added).
fn ensure_source(path: &Path, index: usize, tag: impl std::fmt::Display) -> io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let partial = path.with_extension(format!("{tag}.partial"));
    draw(index)
        .save_with_format(&partial, ImageFormat::Png)
        .map_err(io::Error::other)?;
    fs::rename(&partial, path)
}

/// The "fetch" step: makes sure the source image exists (generating it on
/// the first run), waits `latency` as a network share would, and returns
/// the file's bytes as `Kwargs`, which bgtask merges into the decode task's
/// kwargs.
pub(crate) fn fetch(
    ctx: &TaskContext,
    probe: &ThreadProbe,
    latency: Duration,
) -> io::Result<Kwargs> {
    probe.check();
    let kwargs = ctx.kwargs();
    let index = *kwargs
        .get::<usize>("index")
        .expect("every item has an index");
    let path = kwargs
        .get::<PathBuf>("path")
        .expect("every item has a path");
    ctx.report_progress(0.0, "fetching");
    ensure_source(path, index, ctx.id().as_u64())?;
    // Latency in slices, so that a stop is seen at once.
    const SLICES: u32 = 4;
    for slice in 1..=SLICES {
        if ctx.is_stopped() {
            return Ok(Kwargs::new());
        }
        thread::sleep(latency / SLICES);
        ctx.report_progress(slice as f32 / SLICES as f32 * 0.5, "fetching");
    }
    Ok(Kwargs::new().with("bytes", fs::read(path)?))
}

/// The "decode" step: decodes the fetched bytes and scales them down to
/// fit [`THUMB_SIZE`].
pub(crate) fn decode(ctx: &TaskContext, probe: &ThreadProbe) -> image::ImageResult<Thumbnail> {
    probe.check();
    ctx.report_progress(0.5, "decoding");
    let bytes = ctx
        .kwargs()
        .get::<Vec<u8>>("bytes")
        .map(Vec::as_slice)
        .unwrap_or_default();
    let image = image::load_from_memory_with_format(bytes, ImageFormat::Png)?;
    let thumb = image.thumbnail(THUMB_SIZE.0, THUMB_SIZE.1).to_rgba8();
    Ok(Thumbnail {
        size: [thumb.width() as usize, thumb.height() as usize],
        rgba: thumb.into_raw(),
    })
}
