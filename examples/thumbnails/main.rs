//! A thumbnail cache built the way the original toolkit builds one: per
//! image, a high-priority "check the cache" task, then a lower-priority
//! "decode and resize" task that waits for it and receives its result as
//! kwargs, both in the group of the image's folder. The owner (main)
//! thread drains the events and drives a progress bar; Ctrl-C stops every
//! task and leaves no half-written cache file. A second run finds every
//! thumbnail cached.
//!
//! ```text
//! cargo run --release --example thumbnails                  # a generated demo set of 300 images
//! cargo run --release --example thumbnails -- ~/Pictures    # a folder of PNG/JPEG images
//! cargo run --release --example thumbnails -- --clean --jobs 2
//! ```

mod cache;
mod images;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bgtask::{Event, Group, Kwargs, RecvTimeoutError, TaskId, TaskManager};
use indicatif::{ProgressBar, ProgressStyle};

/// The priority of the "check the cache" tasks: every check runs before
/// any decode, so cache hits show up at once.
const CHECK_PRIORITY: i32 = 10;
/// The priority of the "decode and resize" tasks.
const DECODE_PRIORITY: i32 = 0;

const USAGE: &str = "\
usage: thumbnails [FOLDER] [--jobs N] [--clean] [--cache DIR]

Builds a thumbnail cache (128 px PNGs) for every PNG/JPEG under FOLDER. Without
FOLDER, uses a generated set of 300 test images in the temporary folder.

  --jobs N     worker threads (default: the number of CPUs)
  --clean      delete the cache first
  --cache DIR  the cache folder (default: <temp>/bgtask-thumbs-cache)

Ctrl-C stops all tasks; no half-written cache file is left behind.";

/// The command line.
#[derive(Debug)]
struct Options {
    /// The folder to thumbnail; `None` for the demo set.
    folder: Option<PathBuf>,
    /// The cache folder.
    cache_dir: PathBuf,
    /// The number of worker threads.
    jobs: usize,
    /// Whether to delete the cache first.
    clean: bool,
}

impl Options {
    /// Parses the command line; `Err` holds the message to print.
    fn parse() -> Result<Options, String> {
        let mut options = Options {
            folder: None,
            cache_dir: std::env::temp_dir().join("bgtask-thumbs-cache"),
            jobs: std::thread::available_parallelism().map_or(4, |n| n.get()),
            clean: false,
        };
        let mut args = std::env::args_os().skip(1);
        while let Some(arg) = args.next() {
            match arg.to_str() {
                Some("--help" | "-h") => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                Some("--clean") => options.clean = true,
                Some("--jobs" | "-j") => {
                    options.jobs = args
                        .next()
                        .and_then(|n| n.to_str()?.parse().ok())
                        .filter(|&n| n > 0)
                        .ok_or("--jobs needs a number of threads, at least 1")?;
                }
                Some("--cache") => {
                    options.cache_dir = args.next().ok_or("--cache needs a folder")?.into();
                }
                Some(flag) if flag.starts_with('-') => {
                    return Err(format!("unknown option {flag}\n\n{USAGE}"));
                }
                _ if options.folder.is_none() => options.folder = Some(arg.into()),
                _ => return Err(format!("only one folder, please\n\n{USAGE}")),
            }
        }
        Ok(options)
    }
}

/// What the owner thread counted from the events.
#[derive(Debug, Default)]
struct Tally {
    /// Images whose decode task completed or failed.
    done: usize,
    /// Thumbnails found in the cache.
    cached: usize,
    /// Thumbnails decoded, resized and written.
    made: usize,
    /// Bytes of thumbnails written.
    bytes: u64,
    /// Images whose check or decode failed.
    failed: usize,
    /// Folders whose group finished.
    folders_done: usize,
}

/// How the owner loop ended.
#[derive(Debug)]
enum Ending {
    /// Every image was done.
    Finished,
    /// Ctrl-C: `stopped` tasks were stopped.
    Interrupted { stopped: usize },
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(message) => {
            eprintln!("thumbnails: {message}");
            ExitCode::from(2)
        }
    }
}

/// Runs the example; `Err` for bad input or set-up failures.
fn run() -> Result<ExitCode, String> {
    let options = Options::parse()?;

    // The handler runs on ctrlc's own thread: it only raises a flag, and
    // the owner loop below turns it into stop_all_tasks() + shut_down().
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&interrupted);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .map_err(|e| format!("cannot install the Ctrl-C handler: {e}"))?;

    let manager = TaskManager::builder()
        .max_threads(options.jobs)
        .thread_name("thumbs")
        .start_processing(true)
        .build()
        .map_err(|e| e.to_string())?;

    let root = match &options.folder {
        Some(folder) => folder
            .canonicalize()
            .map_err(|e| format!("{}: {e}", folder.display()))?,
        None => {
            let root = std::env::temp_dir().join("bgtask-thumbs-demo");
            let started = Instant::now();
            let written = images::generate_demo_set(&manager, &root)?;
            if written > 0 {
                println!(
                    "generated {written} demo images in {} ({:.2?})",
                    root.display(),
                    started.elapsed()
                );
            } else {
                println!("reusing the demo images in {}", root.display());
            }
            root
        }
    };

    let cache_dir = &options.cache_dir;
    if options.clean {
        match std::fs::remove_dir_all(cache_dir) {
            Ok(()) => println!("--clean: deleted {}", cache_dir.display()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", cache_dir.display())),
        }
    }
    std::fs::create_dir_all(cache_dir).map_err(|e| format!("{}: {e}", cache_dir.display()))?;
    let cache_dir = cache_dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", cache_dir.display()))?;
    let swept = cache::sweep_stale_tmp_files(&cache_dir).map_err(|e| e.to_string())?;
    if swept > 0 {
        println!("removed {swept} stale temporary files that a killed run left");
    }

    let sources =
        images::find(&root, &cache_dir).map_err(|e| format!("{}: {e}", root.display()))?;
    println!(
        "{} images in {}, cache {}, {} worker thread{}",
        sources.len(),
        root.display(),
        cache_dir.display(),
        options.jobs,
        if options.jobs == 1 { "" } else { "s" },
    );

    // Subscribe before adding: events go to the subscriptions that exist
    // when they are emitted.
    let events = manager.subscribe();
    let started = Instant::now();

    // The decode task of each image: its Completed/Failed marks the image
    // done (a failed check fails its decode task too).
    let mut decode_tasks: HashSet<TaskId> = HashSet::with_capacity(sources.len());
    let mut per_folder: HashMap<String, usize> = HashMap::new();
    // Paused while adding, so that no folder's group runs empty (and
    // reports GroupFinished) before all of its images are added.
    manager.pause_processing();
    // Cloning Kwargs shares the values: one cache path for every task.
    let shared = Kwargs::new().with("cache_dir", cache_dir.clone());
    for source in &sources {
        let group = Group::from(source.folder.as_str());
        let check = manager
            .task()
            .priority(CHECK_PRIORITY)
            .group(&group)
            .kwargs(
                shared
                    .clone()
                    .with("source", source.path.to_string_lossy().into_owned()),
            )
            .spawn(cache::check)
            .map_err(|e| e.to_string())?;
        let decode = manager
            .task()
            .priority(DECODE_PRIORITY)
            .group(group)
            .after([&check])
            .spawn(cache::decode_and_resize)
            .map_err(|e| e.to_string())?;
        decode_tasks.insert(decode.id());
        *per_folder.entry(source.folder.clone()).or_default() += 1;
    }
    // Checks first (priority 10), then decodes, each in the order added.
    manager.start_processing();

    let bar = ProgressBar::new(sources.len() as u64);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} images {elapsed:>3}  {wide_msg}")
            .expect("a valid template"),
    );
    let mut tally = Tally::default();

    let ending = loop {
        if interrupted.load(Ordering::SeqCst) {
            bar.finish_and_clear();
            println!(
                "Ctrl-C after {} of {} images: stopping all tasks",
                tally.done,
                sources.len()
            );
            let stopped = manager.stop_all_tasks();
            manager.shut_down(); // waits for running decodes to see their stop
            break Ending::Interrupted { stopped };
        }
        // A folder's GroupFinished comes right after its last image's
        // event: wait for both, so that every folder is reported.
        if tally.done == sources.len() && tally.folders_done == per_folder.len() {
            bar.finish_and_clear();
            manager.shut_down();
            break Ending::Finished;
        }
        // A short timeout, so that a Ctrl-C is seen promptly when no event comes.
        let event = match events.recv_timeout(Duration::from_millis(50)) {
            Ok(event) => event,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => {
                return Err("the task manager shut down unexpectedly".to_owned());
            }
        };
        match event {
            Event::Completed { id, group, result } if decode_tasks.contains(&id) => {
                let result = result.downcast_ref::<Kwargs>().expect("a Kwargs result");
                if result.get::<bool>("cached") == Some(&true) {
                    tally.cached += 1;
                } else {
                    tally.made += 1;
                    tally.bytes += result.get::<u64>("bytes").copied().unwrap_or(0);
                }
                tally.done += 1;
                bar.inc(1);
                bar.set_message(folder_name(group.as_ref()).to_owned());
            }
            Event::Failed {
                id, group, message, ..
            } if decode_tasks.contains(&id) => {
                tally.failed += 1;
                tally.done += 1;
                bar.inc(1);
                bar.suspend(|| {
                    eprintln!("failed ({}): {message}", folder_name(group.as_ref()));
                });
            }
            Event::Progress { group, message, .. } => {
                bar.set_message(format!("{}: {message}", folder_name(group.as_ref())));
            }
            Event::GroupFinished { group } => {
                let folder = folder_name(Some(&group));
                let count = per_folder.get(folder).copied().unwrap_or(0);
                tally.folders_done += 1;
                bar.suspend(|| println!("folder {folder}: done ({count} images)"));
            }
            // A check's Completed (its result went to its decode task) or
            // Failed (its decode task fails with it and is counted then).
            _ => {}
        }
    };
    let elapsed = started.elapsed();

    if let Ending::Interrupted { stopped } = ending {
        // A decode that ended as the stop came may have renamed its
        // thumbnail into place: a complete file, which the next run uses.
        let thumbnails = cache::thumbnail_count(&cache_dir).map_err(|e| e.to_string())?;
        println!("stopped {stopped} tasks; the cache holds {thumbnails} complete thumbnails");
    }

    // No half-written cache file: every temporary file was renamed into
    // place or removed, whether the task finished, failed or was stopped.
    let leftovers = cache::tmp_files(&cache_dir).map_err(|e| e.to_string())?;
    if leftovers.is_empty() {
        println!("check: no temporary files left in {}", cache_dir.display());
    } else {
        println!("check FAILED: {} temporary files left:", leftovers.len());
        for path in &leftovers {
            println!("  {}", path.display());
        }
    }

    let seconds = elapsed.as_secs_f64();
    println!(
        "{} images: {} cached, {} thumbnails made ({} KiB), {} failed, {} not done; \
         {:.2?}, {:.0} images/s",
        sources.len(),
        tally.cached,
        tally.made,
        tally.bytes / 1024,
        tally.failed,
        sources.len() - tally.done,
        elapsed,
        if seconds > 0.0 {
            tally.done as f64 / seconds
        } else {
            0.0
        },
    );

    Ok(match ending {
        Ending::Interrupted { .. } => ExitCode::from(130),
        Ending::Finished if tally.failed > 0 || !leftovers.is_empty() => ExitCode::FAILURE,
        Ending::Finished => ExitCode::SUCCESS,
    })
}

/// Returns the folder name behind a group (every task here has a named group).
fn folder_name(group: Option<&Group>) -> &str {
    group.and_then(Group::as_name).unwrap_or("?")
}
