//! Statistics over rounds, the tables, and the headline block.

use std::time::Duration;

use crate::pools::Contender;

/// The median of `values` (the mean of the two middle ones for an even count).
pub(crate) fn median(values: &[Duration]) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    let mid = sorted.len() / 2;
    if sorted.len() % 2 == 0 {
        (sorted[mid - 1] + sorted[mid]) / 2
    } else {
        sorted[mid]
    }
}

/// The `q`-quantile (0 to 1) of `values`, nearest rank.
pub(crate) fn quantile(values: &[Duration], q: f64) -> Duration {
    let mut sorted = values.to_vec();
    sorted.sort();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// One contender's times over the rounds of one measurement.
pub(crate) struct Timing {
    /// The contender.
    pub(crate) who: Contender,
    /// One time per round.
    pub(crate) runs: Vec<Duration>,
}

impl Timing {
    /// The median time.
    pub(crate) fn median(&self) -> Duration {
        median(&self.runs)
    }

    /// The median time per item, in nanoseconds.
    pub(crate) fn ns_per(&self, items: usize) -> f64 {
        self.median().as_secs_f64() * 1e9 / items.max(1) as f64
    }
}

/// The ratio to the floor: floor time / contender time, so >1 is faster.
pub(crate) fn ratio_to_floor(timings: &[Timing], who: Contender) -> Option<f64> {
    let floor = timings.iter().find(|t| t.who == Contender::Floor)?.median();
    let mine = timings.iter().find(|t| t.who == who)?.median();
    Some(floor.as_secs_f64() / mine.as_secs_f64().max(1e-12))
}

/// A duration with 3 significant digits and a fitting unit.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let ns = d.as_secs_f64() * 1e9;
    if ns < 1e3 {
        format!("{ns:.0} ns")
    } else if ns < 1e6 {
        format!("{:.1} µs", ns / 1e3)
    } else if ns < 1e9 {
        format!("{:.1} ms", ns / 1e6)
    } else {
        format!("{:.2} s", ns / 1e9)
    }
}

/// A rate per second with a fitting prefix.
pub(crate) fn fmt_rate(per_second: f64) -> String {
    if per_second >= 1e9 {
        format!("{:.2} G/s", per_second / 1e9)
    } else if per_second >= 1e6 {
        format!("{:.2} M/s", per_second / 1e6)
    } else if per_second >= 1e3 {
        format!("{:.1} k/s", per_second / 1e3)
    } else {
        format!("{per_second:.0} /s")
    }
}

/// Nanoseconds with one decimal, or three below 1 ns.
fn fmt_ns(ns: f64) -> String {
    if ns < 1.0 {
        format!("{ns:.3}")
    } else {
        format!("{ns:.1}")
    }
}

/// Prints a table of `timings` for a measurement over `items` tasks, and
/// with `BENCH_EACH_ROUND` set, every round's time in the order they ran.
pub(crate) fn print_table(title: &str, items: usize, timings: &[Timing]) {
    println!();
    println!("{title}");
    println!(
        "  {:<11} {:>10} {:>10} {:>10} {:>10} {:>12} {:>9}",
        "peer", "median", "min", "max", "ns/task", "tasks/s", "vs floor"
    );
    for timing in timings {
        let min = timing.runs.iter().min().copied().unwrap_or_default();
        let max = timing.runs.iter().max().copied().unwrap_or_default();
        let median = timing.median();
        let rate = items as f64 / median.as_secs_f64().max(1e-12);
        let ratio = ratio_to_floor(timings, timing.who)
            .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"));
        println!(
            "  {:<11} {:>10} {:>10} {:>10} {:>10} {:>12} {:>9}",
            timing.who,
            fmt_duration(median),
            fmt_duration(min),
            fmt_duration(max),
            fmt_ns(timing.ns_per(items)),
            fmt_rate(rate),
            ratio
        );
    }
    if std::env::var_os("BENCH_EACH_ROUND").is_some() {
        for timing in timings {
            let rounds: Vec<String> = timing.runs.iter().map(|&d| fmt_duration(d)).collect();
            println!("    rounds of {}: {}", timing.who, rounds.join(", "));
        }
    }
}

/// One line of the headline: what, bgtask's figure, the target, met or not.
struct Line {
    what: String,
    value: String,
    target: String,
    met: Option<bool>,
}

/// The final summary of bgtask's figures against the targets.
#[derive(Default)]
pub(crate) struct Headline {
    lines: Vec<Line>,
}

impl Headline {
    /// Adds a figure; `met` is `None` for figures without a target.
    pub(crate) fn add(&mut self, what: &str, value: String, target: &str, met: Option<bool>) {
        self.lines.push(Line {
            what: what.to_owned(),
            value,
            target: target.to_owned(),
            met,
        });
    }

    /// Adds bgtask's ratio to the floor against a minimum.
    pub(crate) fn ratio(&mut self, what: &str, timings: &[Timing], at_least: f64) {
        if let Some(r) = ratio_to_floor(timings, Contender::Bgtask) {
            self.add(
                what,
                format!("{r:.2}x floor"),
                &format!(">= {at_least:.1}x"),
                Some(r >= at_least),
            );
        }
    }

    /// Prints the block.
    pub(crate) fn print(&self) {
        if self.lines.is_empty() {
            return;
        }
        println!();
        println!("== headline: bgtask against the targets ==");
        for line in &self.lines {
            let verdict = match line.met {
                Some(true) => "ok",
                Some(false) => "MISSED",
                None => "",
            };
            println!(
                "  {:<34} {:>22}   target {:<12} {}",
                line.what, line.value, line.target, verdict
            );
        }
        let missed = self.lines.iter().filter(|l| l.met == Some(false)).count();
        let checked = self.lines.iter().filter(|l| l.met.is_some()).count();
        println!("  {} of {checked} targets met", checked - missed);
    }
}
