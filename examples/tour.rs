//! A small, realistic session with `bgtask`: the owner thread (standing in
//! for a UI thread) queues a "check the cache, then download" chain per
//! asset, in two groups, joins two downloads with a pass-through task, sees
//! one download fail and its thumbnail fail with it, stops one group half
//! way, and prints every event as it drains them.
//!
//! Run with `cargo run --release --example tour`.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use bgtask::{Event, Group, Kwargs, TaskContext, TaskId, TaskManager};

/// A download error with a cause, as an HTTP client would report it.
#[derive(Debug)]
struct DownloadError {
    url: String,
    source: std::io::Error,
}

impl fmt::Display for DownloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "download of {} failed", self.url)
    }
}

impl std::error::Error for DownloadError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Looks the asset up in the local cache. Its `Kwargs` result is merged
/// into the download task's kwargs.
fn check_cache(ctx: &TaskContext) -> Result<Kwargs, DownloadError> {
    let name = ctx
        .kwargs()
        .get::<String>("name")
        .expect("every asset has a name");
    // Pretend that assets whose name has an even length are cached.
    let cached = name.len() % 2 == 0;
    std::thread::sleep(Duration::from_millis(5)); // stands in for a disk look-up
    Ok(Kwargs::new().with("cached", cached))
}

/// Downloads the asset unless the cache check found it.
fn download(ctx: &TaskContext) -> Result<Kwargs, DownloadError> {
    let kwargs = ctx.kwargs();
    let name = kwargs
        .get::<String>("name")
        .expect("every asset has a name")
        .clone();
    let cached = *kwargs
        .get::<bool>("cached")
        .expect("merged from the cache check");
    let url = format!("https://assets.example.com/{name}");
    if name == "rock" {
        let source = std::io::Error::new(std::io::ErrorKind::NotFound, "HTTP 404 Not Found");
        return Err(DownloadError { url, source });
    }
    let bytes = if cached {
        0
    } else {
        // Stands in for network time; checks for a stop now and then.
        for _ in 0..8 {
            if ctx.is_stopped() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        1024 * name.len() as u64
    };
    Ok(Kwargs::new().with(format!("{name}_bytes"), bytes))
}

fn main() -> Result<(), bgtask::Error> {
    let start = Instant::now();
    let manager = TaskManager::builder()
        .max_threads(4)
        .start_processing(true)
        .build()?;
    let events = manager.subscribe();

    let textures = Group::from("textures");
    let models = manager.next_group_id();
    let mut names: BTreeMap<TaskId, String> = BTreeMap::new();
    let mut downloads = BTreeMap::new();

    for (group, assets) in [
        (&textures, &["wood", "metal", "rock", "grass", "brick"][..]),
        (
            &models,
            &[
                "chair", "table", "lamp", "sofa", "shelf", "desk", "bed", "rug",
            ][..],
        ),
    ] {
        for &name in assets {
            let own = Kwargs::new().with("name", name.to_string());
            // High priority: cache checks are quick and unblock downloads.
            let check = manager
                .task()
                .priority(10)
                .group(group.clone())
                .kwargs(own.clone())
                .spawn(check_cache)?;
            let dl = manager
                .task()
                .group(group.clone())
                .after([&check])
                .kwargs(own)
                .spawn(download)?;
            names.insert(check.id(), format!("check {name}"));
            names.insert(dl.id(), format!("download {name}"));
            downloads.insert(name, dl);
        }
    }
    // A thumbnail that needs the failing download: it fails with it.
    let thumb = manager
        .task()
        .group(textures.clone())
        .after([&downloads["rock"]])
        .spawn(|_| Ok::<_, std::convert::Infallible>("thumbnail"))?;
    names.insert(thumb.id(), "thumbnail rock".into());
    // A pass-through join of two downloads: its result merges theirs.
    let join = manager
        .task()
        .group(textures.clone())
        .after([&downloads["wood"], &downloads["metal"]])
        .spawn_pass_through()?;
    names.insert(join.id(), "join wood+metal".into());

    println!(
        "queued {} tasks: textures in group {textures}, models in group {models}\n",
        names.len()
    );
    let (mut completed, mut failed, mut models_done, mut stopped) = (0, 0, 0, 0);
    let mut finished_groups = Vec::new();
    // Every task ends exactly once: by an event, or by the stop call; and
    // the textures group finishes right after its last task's event.
    while completed + failed + stopped < names.len() || finished_groups.is_empty() {
        let event = events
            .recv_timeout(Duration::from_secs(10))
            .expect("the pool stalled");
        let t = start.elapsed().as_millis();
        match &event {
            Event::Completed { id, group, result } => {
                completed += 1;
                let what = &names[id];
                let detail = match result.downcast_ref::<Kwargs>() {
                    Some(kw) => format!("{:?}", kw.keys().collect::<Vec<_>>()),
                    None => "thumbnail".into(),
                };
                println!("{t:>5} ms  completed  {what:<22} {detail}");
                if group.as_ref() == Some(&models) && what.starts_with("download") {
                    models_done += 1;
                    if models_done == 3 {
                        stopped = manager.stop_task_group(&models, false, false);
                        println!("{t:>5} ms  -- the user closes the models view: stopped {stopped} tasks of group {models}");
                    }
                }
            }
            Event::Failed {
                id,
                message,
                traceback,
                ..
            } => {
                failed += 1;
                println!("{t:>5} ms  FAILED     {:<22} {message}", names[id]);
                if names[id] == "download rock" {
                    for line in traceback.lines() {
                        println!("                     | {line}");
                    }
                }
            }
            Event::GroupFinished { group } => {
                println!("{t:>5} ms  group {group} finished");
                finished_groups.push(group.clone());
            }
            other => println!("{t:>5} ms  {other:?}"),
        }
    }
    manager.shut_down();

    println!("\nsummary after {} ms:", start.elapsed().as_millis());
    println!(
        "  {completed} completed, {failed} failed, {stopped} stopped, of {} tasks",
        names.len()
    );
    println!("  groups finished: {finished_groups:?} (models was stopped, so it never finishes)");
    assert_eq!(failed, 2, "the rock download and its thumbnail");
    assert_eq!(finished_groups, [textures]);
    assert!(
        manager
            .add_task(|_| Ok::<_, std::convert::Infallible>(()))
            .is_err(),
        "shut down"
    );
    Ok(())
}
