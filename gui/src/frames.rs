//! Frame-time samples and their percentiles.

use std::fmt;
use std::time::{Duration, Instant};

/// The frame-time samples of one phase: while thumbnails load, or while
/// nothing does (the baseline).
#[derive(Debug, Default)]
pub(crate) struct Phase {
    /// eframe's frame time (`cpu_usage`): `ui()`, tessellation and
    /// painting, without the buffer swap.
    pub(crate) frame: Samples,
    /// From one frame's start to the next's, for frames that asked for the
    /// next one at once (scrolling): everything, the swap included.
    pub(crate) interval: Samples,
    /// Time in `ui()`: draining events, uploading textures, laying out.
    pub(crate) ui: Samples,
}

/// Sorts each frame's figures into [`Phase`]s. Call [`begin`](Self::begin)
/// first thing in a frame and [`end`](Self::end) last.
#[derive(Debug, Default)]
pub(crate) struct FrameClock {
    pub(crate) loading: Phase,
    pub(crate) idle: Phase,
    previous: Option<Previous>,
}

#[derive(Debug)]
struct Previous {
    start: Instant,
    loading: bool,
    animating: bool,
}

impl FrameClock {
    fn phase(&mut self, loading: bool) -> &mut Phase {
        if loading {
            &mut self.loading
        } else {
            &mut self.idle
        }
    }

    /// `cpu`: eframe's frame time of the previous frame.
    pub(crate) fn begin(&mut self, start: Instant, cpu: Option<Duration>) {
        let Some(Previous {
            start: previous,
            loading,
            animating,
        }) = self.previous.take()
        else {
            return;
        };
        let phase = self.phase(loading);
        if let Some(cpu) = cpu {
            phase.frame.push(cpu);
        }
        if animating {
            phase.interval.push(start - previous);
        }
    }

    /// `loading`: tasks were live during the frame; `animating`: the frame
    /// asked for the next one at once.
    pub(crate) fn end(&mut self, start: Instant, loading: bool, animating: bool) {
        self.phase(loading).ui.push(start.elapsed());
        self.previous = Some(Previous {
            start,
            loading,
            animating,
        });
    }
}

/// A set of durations, summarised by nearest-rank percentiles.
#[derive(Debug, Default, Clone)]
pub(crate) struct Samples {
    values: Vec<Duration>,
}

/// The summary of a [`Samples`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Summary {
    pub(crate) count: usize,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
}

impl Samples {
    pub(crate) fn push(&mut self, value: Duration) {
        self.values.push(value);
    }

    pub(crate) fn len(&self) -> usize {
        self.values.len()
    }

    /// `None` while empty.
    pub(crate) fn summary(&self) -> Option<Summary> {
        let mut sorted = self.values.clone();
        sorted.sort_unstable();
        let rank =
            |q: f64| sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
        (!sorted.is_empty()).then(|| Summary {
            count: sorted.len(),
            p50: rank(0.50),
            p99: rank(0.99),
            max: sorted[sorted.len() - 1],
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} samples)",
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.count
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let mut s = Samples::default();
        assert!(s.summary().is_none());
        for ms in 1..=100 {
            s.push(Duration::from_millis(ms));
        }
        let sum = s.summary().unwrap();
        assert_eq!(sum.p50, Duration::from_millis(50));
        assert_eq!(sum.p99, Duration::from_millis(99));
        assert_eq!(sum.max, Duration::from_millis(100));
        assert_eq!(sum.count, 100);
    }
}
