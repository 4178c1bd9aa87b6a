//! stdout and stderr: every line attache writes while it serves (log events,
//! access-log lines) is appended to a bounded buffer per stream that a
//! writer thread empties. A reader that stops (a stuck log collector, a full
//! pipe) only ever blocks that thread: when a buffer is full, lines are
//! dropped and counted (`attache_log_lines_dropped_total{stream}`), and the
//! drop is reported on stderr once a write goes through again. No worker
//! thread and no signal handler ever waits for a reader.
//!
//! A line costs its writer a copy under an uncontended lock, not a wake-up:
//! the writer thread is woken by the first line after it has written
//! everything, then gathers for [`GATHER`] (or until [`WAKE_BYTES`] wait)
//! and writes all of it at once, so a busy access log is a few large writes
//! a second instead of a thread switch per request.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Bytes a stream's buffer holds before it drops lines: a burst of about
/// 8,000 access-log lines, well beyond what a reader that keeps up falls
/// behind by.
const BUFFER_BYTES: usize = 4 << 20;

/// How long the writer gathers lines after the first: the most a line waits
/// for its write when the reader keeps up.
const GATHER: Duration = Duration::from_millis(20);

/// Gathered bytes that wake the writer before [`GATHER`] has passed.
const WAKE_BYTES: usize = 64 << 10;

/// One of the two output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub(crate) const ALL: [Self; 2] = [Self::Stdout, Self::Stderr];

    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Stdout => "stdout",
            Self::Stderr => "stderr",
        }
    }

    fn queue(self) -> &'static LineQueue {
        static STDOUT: OnceLock<LineQueue> = OnceLock::new();
        static STDERR: OnceLock<LineQueue> = OnceLock::new();
        let cell = match self {
            Self::Stdout => &STDOUT,
            Self::Stderr => &STDERR,
        };
        let queue = cell.get_or_init(LineQueue::default);
        queue.writer.get_or_init(|| start_writer(self));
        queue
    }

    /// Queues one line (it should end with `\n`) without ever waiting for
    /// the reader: when the buffer is full the line is dropped and counted.
    pub(crate) fn write_line(self, line: &[u8]) {
        self.queue().push(line);
    }

    /// Lines dropped on this stream so far.
    pub(crate) fn dropped(self) -> u64 {
        self.queue().dropped.load(Ordering::Relaxed)
    }
}

/// Waits up to `timeout` for both writer threads to write what is queued:
/// called on the way out, so the last lines (the drain summary, a fatal
/// error) reach a reader that is reading, and a stuck reader delays the exit
/// by `timeout` at most.
pub(crate) fn flush(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for stream in Stream::ALL {
        let queue = stream.queue();
        queue.hurry();
        while queue.written.load(Ordering::Acquire) < queue.queued.load(Ordering::Acquire)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

#[derive(Default)]
struct LineQueue {
    pending: Mutex<Pending>,
    /// The writer waits here: for a first line, or for a full batch.
    wake: Condvar,
    writer: OnceLock<()>,
    queued: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
}

/// Lines not yet taken by the writer.
#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    lines: u64,
    /// Flush asked the writer not to gather.
    hurry: bool,
}

/// Starts a stream's writer thread. Without one, lines fill the buffer and
/// are then dropped and counted: the proxy keeps serving, which matters
/// more than its logs.
fn start_writer(stream: Stream) {
    let spawned = std::thread::Builder::new()
        .name(format!("attache-{}", stream.label()))
        .spawn(move || drain(stream));
    if let Err(error) = spawned {
        eprintln!(
            "attache: cannot start the {} writer: {error}",
            stream.label()
        );
    }
}

impl LineQueue {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A writer that panicked mid-copy leaves at worst a torn line.
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, line: &[u8]) {
        let mut pending = self.lock();
        if pending.bytes.len() + line.len() > BUFFER_BYTES {
            drop(pending);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let was_empty = pending.bytes.is_empty();
        pending.bytes.extend_from_slice(line);
        pending.lines += 1;
        // Counted under the lock, so `written` never passes `queued`.
        self.queued.fetch_add(1, Ordering::AcqRel);
        let full =
            pending.bytes.len() >= WAKE_BYTES && pending.bytes.len() - line.len() < WAKE_BYTES;
        drop(pending);
        if was_empty || full {
            self.wake.notify_one();
        }
    }

    fn hurry(&self) {
        self.lock().hurry = true;
        self.wake.notify_one();
    }

    /// Waits for lines, gathers more for a moment, and takes them all
    /// (swapped with `batch`, whose room the next lines reuse).
    fn take(&self, batch: &mut Vec<u8>) -> u64 {
        let mut pending = self.lock();
        while pending.bytes.is_empty() {
            pending = self
                .wake
                .wait(pending)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        let gathering = Instant::now() + GATHER;
        while pending.bytes.len() < WAKE_BYTES && !pending.hurry {
            let Some(left) = gathering.checked_duration_since(Instant::now()) else {
                break;
            };
            pending = self
                .wake
                .wait_timeout(pending, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        pending.hurry = false;
        batch.clear();
        std::mem::swap(batch, &mut pending.bytes);
        std::mem::take(&mut pending.lines)
    }
}

/// The writer thread: blocking writes, which only ever hold up this thread.
fn drain(stream: Stream) {
    let queue = stream.queue();
    let mut reported = 0;
    let mut batch = Vec::new();
    loop {
        let lines = queue.take(&mut batch);
        let result = match stream {
            Stream::Stdout => std::io::stdout().lock().write_all(&batch),
            Stream::Stderr => std::io::stderr().lock().write_all(&batch),
        };
        queue.written.fetch_add(lines, Ordering::AcqRel);
        if batch.capacity() > 2 * WAKE_BYTES {
            // A burst's room is given back.
            batch = Vec::new();
        }
        if result.is_err() {
            // A closed stream: nothing will ever read these lines.
            continue;
        }
        let dropped = queue.dropped.load(Ordering::Relaxed);
        if dropped > reported {
            // Goes through the stderr queue like every event, so reporting
            // never waits either.
            tracing::warn!(
                stream = stream.label(),
                lines = dropped - reported,
                "log lines dropped: the reader of this stream was not keeping up"
            );
            reported = dropped;
        }
    }
}

/// The `tracing` writer: one event is formatted into a buffer and queued
/// whole when the formatter is done with it.
#[derive(Default)]
pub(crate) struct EventWriter {
    line: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            Stream::Stderr.write_line(&self.line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_queued_whole_when_its_writer_is_dropped() {
        let before =
            Stream::Stderr.queue().queued.load(Ordering::Acquire) + Stream::Stderr.dropped();
        {
            let mut writer = EventWriter::default();
            writer.write_all(b"{\"message\":").unwrap();
            writer.write_all(b"\"one\"}\n").unwrap();
        }
        let after =
            Stream::Stderr.queue().queued.load(Ordering::Acquire) + Stream::Stderr.dropped();
        assert_eq!(after, before + 1);
    }

    #[test]
    fn a_full_buffer_drops_and_counts_lines_and_the_writer_takes_all_of_it_at_once() {
        let queue = LineQueue::default();
        let line = [&[b'x'; 1023][..], b"\n"].concat();
        let fits = BUFFER_BYTES / line.len();
        for _ in 0..fits {
            queue.push(&line);
        }
        queue.push(&line);
        assert_eq!(queue.queued.load(Ordering::Acquire), fits as u64);
        assert_eq!(queue.dropped.load(Ordering::Acquire), 1);

        let mut batch = Vec::new();
        assert_eq!(queue.take(&mut batch), fits as u64);
        assert_eq!(batch.len(), fits * line.len());
        assert!(batch.chunks(line.len()).all(|chunk| chunk == line));
        queue.push(&line);
        assert_eq!(queue.dropped.load(Ordering::Acquire), 1, "room again");
    }

    #[test]
    fn lines_from_many_threads_come_out_whole() {
        let queue = LineQueue::default();
        std::thread::scope(|scope| {
            for thread in 0..4 {
                let queue = &queue;
                scope.spawn(move || {
                    for number in 0..500 {
                        queue.push(format!("{{\"thread\":{thread},\"n\":{number}}}\n").as_bytes());
                    }
                });
            }
        });
        queue.hurry();
        let mut batch = Vec::new();
        assert_eq!(queue.take(&mut batch), 2000);
        let mut last = [None::<u64>; 4];
        for line in batch
            .split(|byte| *byte == b'\n')
            .filter(|line| !line.is_empty())
        {
            let value: serde_json::Value = serde_json::from_slice(line).unwrap();
            let thread = usize::try_from(value["thread"].as_u64().unwrap()).unwrap();
            let number = value["n"].as_u64().unwrap();
            assert_eq!(
                last[thread].map_or(0, |last| last + 1),
                number,
                "in order per thread"
            );
            last[thread] = Some(number);
        }
        assert_eq!(last, [Some(499); 4]);
    }
}
