//! The thumbnail cache and the two tasks of each image: "check the cache"
//! and "decode and resize".
//!
//! A thumbnail is named by a hash of its source's path, modification time
//! and size, so an edited image misses the cache and an unchanged one hits
//! it. A thumbnail is written to `<name>.tmp-<pid>` and renamed into place,
//! so the cache never holds a half-written file under a real name; the
//! temporary file is removed on every path that does not rename it (error,
//! stop, panic).

use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bgtask::{Kwargs, TaskContext};
use image::ImageFormat;

/// The error type of both tasks: its `Display` becomes the `Failed` message.
pub(crate) type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// The longest side of a thumbnail, in pixels.
const THUMB_SIZE: u32 = 128;

/// What marks a temporary file: `<name>.tmp-<pid>`.
const TMP_MARK: &str = ".tmp-";

/// Returns the cache file name of a source with this path, modification
/// time and size: a 64-bit FNV-1a hash, stable across runs and toolchains
/// (unlike `DefaultHasher`).
fn cache_name(source: &Path, modified: SystemTime, len: u64) -> String {
    let nanos = modified
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_nanos();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = source.as_os_str().as_encoded_bytes().iter();
    for &b in bytes.chain(&nanos.to_le_bytes()).chain(&len.to_le_bytes()) {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{hash:016x}.png")
}

/// The "check the cache" task (high priority): looks the source up and
/// returns `{"cached": bool, "cache_path": String, "source": String}`,
/// which bgtask merges into the kwargs of the decode task that follows.
///
/// Reads `source` (a `String`) and `cache_dir` (a `PathBuf`) from its kwargs.
pub(crate) fn check(ctx: &TaskContext) -> Result<Kwargs, TaskError> {
    let kwargs = ctx.kwargs();
    let source = kwargs.get::<String>("source").ok_or("no source path")?;
    let cache_dir = kwargs.get::<PathBuf>("cache_dir").ok_or("no cache dir")?;
    let meta = fs::metadata(source).map_err(|e| format!("{source}: {e}"))?;
    let modified = meta.modified().map_err(|e| format!("{source}: {e}"))?;
    let name = cache_name(Path::new(source), modified, meta.len());
    let cache_path = cache_dir.join(name);
    Ok(Kwargs::new()
        .with("cached", cache_path.is_file())
        .with("cache_path", cache_path.to_string_lossy().into_owned())
        .with("source", source.clone()))
}

/// The "decode and resize" task (low priority, after its check): if the
/// check found no thumbnail, decodes the source, resizes it to fit
/// `THUMB_SIZE` and writes the cache file atomically. Returns
/// `{"cached": bool, "width": u32, "height": u32, "bytes": u64}` (size and
/// bytes are 0 for a cache hit), or `{"stopped": true}` if it saw its stop
/// before writing (bgtask drops that outcome anyway).
pub(crate) fn decode_and_resize(ctx: &TaskContext) -> Result<Kwargs, TaskError> {
    let kwargs = ctx.kwargs();
    // Merged from the check's result (SPEC 3).
    let cached = *kwargs
        .get::<bool>("cached")
        .ok_or("no cache check result")?;
    if cached {
        return Ok(thumb_result(true, 0, 0, 0));
    }
    let source = kwargs.get::<String>("source").ok_or("no source path")?;
    let cache_path = Path::new(kwargs.get::<String>("cache_path").ok_or("no cache path")?);
    let stopped = || Ok(Kwargs::new().with("stopped", true));

    let file_name = Path::new(source)
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    ctx.report_progress(0.0, format!("decoding {file_name}"));
    let image = image::ImageReader::open(source)
        .and_then(image::ImageReader::with_guessed_format)
        .map_err(|e| format!("{source}: {e}"))?
        .decode()
        .map_err(|e| format!("{source}: {e}"))?;
    if ctx.is_stopped() {
        return stopped();
    }
    let thumb = image.thumbnail(THUMB_SIZE, THUMB_SIZE);
    let mut png = Cursor::new(Vec::new());
    thumb.write_to(&mut png, ImageFormat::Png)?;
    let png = png.into_inner();
    if ctx.is_stopped() {
        return stopped();
    }

    ctx.report_progress(0.8, format!("writing {file_name}"));
    let tmp = TmpFile::new(cache_path);
    fs::write(&tmp.path, &png).map_err(|e| format!("{}: {e}", tmp.path.display()))?;
    // The last chance to give up. A stop that comes after the rename is
    // harmless: the thumbnail is complete, and the next run uses it.
    if ctx.is_stopped() {
        return stopped(); // `tmp` removes the file
    }
    tmp.persist(cache_path)?;
    Ok(thumb_result(
        false,
        thumb.width(),
        thumb.height(),
        png.len() as u64,
    ))
}

/// Builds the decode task's result.
fn thumb_result(cached: bool, width: u32, height: u32, bytes: u64) -> Kwargs {
    Kwargs::new()
        .with("cached", cached)
        .with("width", width)
        .with("height", height)
        .with("bytes", bytes)
}

/// A temporary file next to its final path, removed on drop unless
/// [`persist`](Self::persist) renamed it into place: no return, `?` or
/// panic between writing and renaming leaves it behind.
struct TmpFile {
    /// `<final path>.tmp-<pid>`.
    path: PathBuf,
    /// Set once the file was renamed, so that drop leaves it alone.
    persisted: bool,
}

impl TmpFile {
    /// Names the temporary file for `target`; creates nothing yet.
    fn new(target: &Path) -> Self {
        let mut path = target.as_os_str().to_owned();
        path.push(format!("{TMP_MARK}{}", std::process::id()));
        TmpFile {
            path: path.into(),
            persisted: false,
        }
    }

    /// Renames the file to `target`, atomically on one file system.
    fn persist(mut self, target: &Path) -> std::io::Result<()> {
        fs::rename(&self.path, target)?;
        self.persisted = true;
        Ok(())
    }
}

impl Drop for TmpFile {
    fn drop(&mut self) {
        if !self.persisted {
            // It may not exist (the write failed before creating it).
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Returns the temporary files in `cache_dir`.
pub(crate) fn tmp_files(cache_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(cache_dir)? {
        let path = entry?.path();
        if path.to_string_lossy().contains(TMP_MARK) {
            found.push(path);
        }
    }
    Ok(found)
}

/// Returns how many thumbnails `cache_dir` holds.
pub(crate) fn thumbnail_count(cache_dir: &Path) -> std::io::Result<usize> {
    let mut count = 0;
    for entry in fs::read_dir(cache_dir)? {
        count += usize::from(entry?.path().extension().is_some_and(|e| e == "png"));
    }
    Ok(count)
}

/// Removes temporary files that a killed run (SIGKILL, power loss) left
/// behind, if they are older than a minute, so that a run sharing the
/// cache right now keeps its own. Returns how many it removed.
pub(crate) fn sweep_stale_tmp_files(cache_dir: &Path) -> std::io::Result<usize> {
    let mut removed = 0;
    for path in tmp_files(cache_dir)? {
        let age = fs::metadata(&path)?
            .modified()?
            .elapsed()
            .unwrap_or_default();
        if age > Duration::from_secs(60) && fs::remove_file(&path).is_ok() {
            removed += 1;
        }
    }
    Ok(removed)
}
