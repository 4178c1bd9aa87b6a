//! stdout and stderr: every line attache writes while it serves (log events,
//! access-log lines) goes into a bounded queue per stream that a writer
//! thread drains. A reader that stops (a stuck log collector, a full pipe)
//! only ever blocks that thread: when a queue is full, lines are dropped and
//! counted (`attache_log_lines_dropped_total{stream}`), and the drop is
//! reported on stderr once a write goes through again. No worker thread and
//! no signal handler ever waits for a reader.

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::time::{Duration, Instant};

/// Lines a queue holds before it drops: a burst of about 4 MiB of access-log
/// lines, well beyond what a reader that keeps up falls behind by.
const QUEUE_LINES: usize = 4096;

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
        cell.get_or_init(|| LineQueue::start(self))
    }

    /// Queues one line (it should end with `\n`) without ever waiting: when
    /// the queue is full the line is dropped and counted.
    pub(crate) fn write_line(self, line: Vec<u8>) {
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
        while queue.written.load(Ordering::Acquire) < queue.queued.load(Ordering::Acquire)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

struct LineQueue {
    sender: SyncSender<Vec<u8>>,
    queued: AtomicU64,
    written: AtomicU64,
    dropped: AtomicU64,
}

impl LineQueue {
    fn start(stream: Stream) -> Self {
        let (sender, receiver) = std::sync::mpsc::sync_channel(QUEUE_LINES);
        let spawned = std::thread::Builder::new()
            .name(format!("attache-{}", stream.label()))
            .spawn(move || drain(stream, &receiver));
        if let Err(error) = spawned {
            // Without a writer thread every line is dropped and counted: the
            // proxy keeps serving, which matters more than its logs.
            eprintln!(
                "attache: cannot start the {} writer: {error}",
                stream.label()
            );
        }
        Self {
            sender,
            queued: AtomicU64::new(0),
            written: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    fn push(&self, line: Vec<u8>) {
        // Counted before the send, so `written` never passes `queued`.
        self.queued.fetch_add(1, Ordering::AcqRel);
        match self.sender.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// The writer thread: blocking writes, which only ever hold up this thread.
fn drain(stream: Stream, receiver: &Receiver<Vec<u8>>) {
    let mut reported = 0;
    while let Ok(line) = receiver.recv() {
        let result = match stream {
            Stream::Stdout => std::io::stdout().lock().write_all(&line),
            Stream::Stderr => std::io::stderr().lock().write_all(&line),
        };
        let queue = stream.queue();
        queue.written.fetch_add(1, Ordering::AcqRel);
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
            Stream::Stderr.write_line(std::mem::take(&mut self.line));
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
}
