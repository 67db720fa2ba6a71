//! The images to thumbnail: found in a folder, or a generated demo set.

use std::fs;
use std::io::{self, Cursor};
use std::path::{Path, PathBuf};

use bgtask::TaskManager;
use image::{ImageFormat, Rgb, RgbImage};

/// The extensions of the formats the example decodes (the `image` crate is
/// built with the PNG and JPEG codecs only).
const EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// The demo set: this many subfolders ...
const DEMO_FOLDERS: [&str; 3] = ["a", "b", "c"];
/// ... of this many images each ...
const DEMO_PER_FOLDER: u32 = 100;
/// ... of this size.
const DEMO_SIZE: (u32, u32) = (256, 192);

/// One image to thumbnail.
#[derive(Debug)]
pub(crate) struct Source {
    /// Its absolute path.
    pub(crate) path: PathBuf,
    /// Its folder relative to the root folder (`.` for the root itself):
    /// the name of the bgtask group of its two tasks.
    pub(crate) folder: String,
}

/// Returns every PNG or JPEG under `root` (hidden folders and `skip`
/// excluded), sorted by path.
pub(crate) fn find(root: &Path, skip: &Path) -> io::Result<Vec<Source>> {
    let mut found = Vec::new();
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in fs::read_dir(&folder)? {
            let entry = entry?;
            let path = entry.path();
            let hidden = entry.file_name().to_string_lossy().starts_with('.');
            if entry.file_type()?.is_dir() {
                if !hidden && path != skip {
                    folders.push(path);
                }
            } else if !hidden && has_image_extension(&path) {
                let relative = folder.strip_prefix(root).unwrap_or(&folder);
                let folder = match relative.to_string_lossy() {
                    name if name.is_empty() => ".".to_owned(),
                    name => name.into_owned(),
                };
                found.push(Source { path, folder });
            }
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(found)
}

/// Returns `true` if `path` ends in one of `EXTENSIONS` (any case).
fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Writes the demo set under `root` (`a/`, `b/`, `c/`, 100 PNGs each),
/// skipping images that already exist, and returns how many it wrote.
///
/// Uses the manager itself: one ungrouped task per missing image, awaited
/// through its `TaskHandle` (no events needed; nobody has subscribed yet).
pub(crate) fn generate_demo_set(manager: &TaskManager, root: &Path) -> Result<usize, String> {
    let mut handles = Vec::new();
    for (f, folder) in (0u32..).zip(DEMO_FOLDERS) {
        let dir = root.join(folder);
        fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for i in 0..DEMO_PER_FOLDER {
            let path = dir.join(format!("img_{i:03}.png"));
            if path.is_file() {
                continue;
            }
            let seed = f * DEMO_PER_FOLDER + i;
            let handle = manager
                .add_task(move |_| write_demo_image(&path, seed))
                .map_err(|e| e.to_string())?;
            handles.push(handle);
        }
    }
    for handle in &handles {
        handle.wait().map_err(|e| e.to_string())?;
    }
    Ok(handles.len())
}

/// Writes one demo image: a gradient with a pattern that `seed` varies.
/// Written to a temporary name and renamed, like a thumbnail, so that a
/// Ctrl-C during generation leaves no truncated PNG for the next run.
fn write_demo_image(path: &Path, seed: u32) -> io::Result<()> {
    let (w, h) = DEMO_SIZE;
    let stripes = 2 + seed % 7;
    let image = RgbImage::from_fn(w, h, |x, y| {
        let r = (x * 255 / w) as u8;
        let g = (y * 255 / h) as u8;
        let b = if (x * stripes / w + y * stripes / h) % 2 == 0 {
            (seed * 37 % 256) as u8
        } else {
            255 - (seed * 11 % 256) as u8
        };
        Rgb([r, g, b])
    });
    let mut png = Cursor::new(Vec::new());
    image
        .write_to(&mut png, ImageFormat::Png)
        .map_err(io::Error::other)?;
    let tmp = path.with_extension(format!("png.tmp-{}", std::process::id()));
    fs::write(&tmp, png.into_inner())?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}
