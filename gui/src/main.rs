//! `bgtask-gui`: a scrolling grid of a few hundred thumbnails, each fetched
//! and decoded by bgtask's workers while the UI thread stays responsive.
//!
//! The items in view get a higher priority as the user scrolls
//! (`set_priority`), unloaded items that end up more than three screens away
//! are stopped (`stop_task`) and added again when they come back, a progress
//! bar counts the loaded thumbnails and "Cancel" stops everything
//! (`stop_all_tasks`). The manager's notifier calls `request_repaint`, so the
//! UI sleeps until there is something to show. No task runs on the UI
//! thread: every task checks, and the count is reported.
//!
//! Run it with `cargo run --release -p bgtask-gui`; `--help` lists the
//! options. `scripts/gui-check` runs it under Xvfb and takes a screenshot.

mod app;
mod frames;
mod images;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use eframe::egui;

use crate::app::{Options, ThumbnailsApp};
use crate::images::ThreadProbe;

const USAGE: &str = "\
usage: bgtask-gui [options]

  --items N                  thumbnails in the grid (default 600)
  --latency-ms MS            simulated latency of each fetch (default 15)
  --threads N                worker threads (default 4)
  --decode-threads N         decode tasks at once, a group limit (default: cores - 1,
                             at least 1), so that the UI thread keeps a core
  --fresh                    delete and regenerate the source images
  --auto-scroll              scroll by itself: a page down, a jump to the bottom,
                             then smoothly up to the top, pausing wherever the view
                             is not loaded yet (so that everything loads)
  --auto-exit-after-loaded   close once everything is loaded and shown
  --hold-until-stdin         with --auto-exit-after-loaded: stay open until a
                             line or end of file on standard input
  --report PATH              also write the report (frame times) to PATH
  --frame-log PATH           write one CSV line per frame to PATH (with the report)

The source images are generated on first use in <temp dir>/bgtask-gui-demo.
Once everything has loaded, the report (frame times while loading, tasks on
the UI thread) is printed; its last line starts with 'bgtask-gui: all loaded'.";

fn parse_args() -> Result<(Options, bool), String> {
    let mut opts = Options {
        items: 600,
        latency: Duration::from_millis(15),
        threads: 4,
        decode_threads: std::thread::available_parallelism()
            .map_or(1, |n| n.get().saturating_sub(1).max(1)),
        dir: images::source_dir(),
        auto_scroll: false,
        auto_exit: false,
        hold_until_stdin: false,
        report: None,
        frame_log: None,
    };
    let mut fresh = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or_else(|| format!("{name} needs a value"));
        let number = |name: &str, text: String| {
            text.parse::<usize>()
                .map_err(|e| format!("{name} {text}: {e}"))
        };
        match arg.as_str() {
            "--items" => opts.items = number("--items", value("--items")?)?,
            "--latency-ms" => {
                let ms = number("--latency-ms", value("--latency-ms")?)?;
                opts.latency = Duration::from_millis(ms as u64);
            }
            "--threads" => opts.threads = number("--threads", value("--threads")?)?,
            "--decode-threads" => {
                opts.decode_threads = number("--decode-threads", value("--decode-threads")?)?;
            }
            "--report" => opts.report = Some(PathBuf::from(value("--report")?)),
            "--frame-log" => opts.frame_log = Some(PathBuf::from(value("--frame-log")?)),
            "--fresh" => fresh = true,
            "--auto-scroll" => opts.auto_scroll = true,
            "--auto-exit-after-loaded" => opts.auto_exit = true,
            "--hold-until-stdin" => opts.hold_until_stdin = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => return Err(format!("unknown option {other}\n\n{USAGE}")),
        }
    }
    if opts.items == 0 {
        return Err("--items must be at least 1".into());
    }
    Ok((opts, fresh))
}

fn main() -> ExitCode {
    let (opts, fresh) = match parse_args() {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("bgtask-gui: {message}");
            return ExitCode::from(2);
        }
    };
    if fresh {
        let _ = std::fs::remove_dir_all(&opts.dir);
    }
    if let Err(err) = std::fs::create_dir_all(&opts.dir) {
        eprintln!("bgtask-gui: cannot create {}: {err}", opts.dir.display());
        return ExitCode::FAILURE;
    }
    // This thread runs the event loop and every `ui()` call: the UI thread.
    let probe = ThreadProbe::for_current_thread();
    let quit = Arc::new(AtomicBool::new(false));
    println!(
        "bgtask-gui: {} items, {} worker threads ({} for decoding), fetch latency {} ms, images in {}",
        opts.items,
        opts.threads,
        opts.decode_threads,
        opts.latency.as_millis(),
        opts.dir.display()
    );

    let native = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("bgtask thumbnails")
            .with_inner_size([1280.0, 800.0])
            .with_position([0.0, 0.0]),
        ..Default::default()
    };
    let app_probe = Arc::clone(&probe);
    let app_quit = Arc::clone(&quit);
    let result = eframe::run_native(
        "bgtask thumbnails",
        native,
        Box::new(move |cc| {
            if opts.hold_until_stdin {
                watch_stdin(cc.egui_ctx.clone(), app_quit.clone());
            }
            let app = ThumbnailsApp::new(&cc.egui_ctx, opts, app_probe, app_quit)?;
            Ok(Box::new(app))
        }),
    );
    if let Err(err) = result {
        eprintln!("bgtask-gui: {err}");
        return ExitCode::FAILURE;
    }
    let on_ui = probe.on_ui_thread.load(Ordering::Relaxed);
    if on_ui > 0 {
        eprintln!("bgtask-gui: FAILED: {on_ui} task bodies ran on the UI thread");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// Sets `quit` and wakes the UI when standard input gives a line or ends.
fn watch_stdin(ctx: egui::Context, quit: Arc<AtomicBool>) {
    std::thread::spawn(move || {
        let _ = std::io::stdin().lock().read_line(&mut String::new());
        quit.store(true, Ordering::Relaxed);
        ctx.request_repaint();
    });
}
