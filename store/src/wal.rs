//! The write-ahead log: what makes an acknowledged append durable.
//!
//! Files: `wal/<first seq, 20 digits>.wal`, rolled at about `segment_bytes`. Each record is
//! `[len: u32 LE][crc32: u32 LE][seq: u64 LE][body]` where `len` counts `seq` and `body` and the CRC (crc32fast)
//! covers them both. The body is `[n: u32]` then `n` times `[table: u8][ipc_len: u32][Arrow IPC stream]`, so
//! one record holds every (table, batch) pair of one `append` call and they replay together.
//!
//! Group commit: a dedicated thread owns the active segment. Callers encode their record body on their own
//! task (that work runs in parallel), send it over a channel and wait on a oneshot. The thread takes
//! everything queued, waits up to `group_commit_window` for callers that are still on their way (it knows how
//! many appends are in flight, so a lone caller never waits), writes the group with one `write`, calls
//! `sync_data` once, hands the rows to the buffer in sequence order and then acknowledges them all.
//!
//! Audit: the thread keeps a running SHA-256 of the active segment (fed after the callers are acknowledged)
//! and records it as `seal_wal` in the audit chain when the segment is closed; `delete_covered` records
//! `retire_wal` before deleting. A segment left open by a crash is sealed from disk by the next `open`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Cursor, IoSlice, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::audit::{AuditLog, Draft, FileRecord, Op};
use crate::metrics::metrics;
use crate::{StoreError, Table};

const HEADER: usize = 8; // len + crc
const SEQ: usize = 8;
/// What precedes a record's body in the file: length, CRC, sequence.
type FrameHeader = [u8; HEADER + SEQ];

/// One durable record, in sequence order.
pub(crate) type Entries = Vec<(Table, RecordBatch)>;

/// Called by the writer thread after each fsync, with the group's records in sequence order, before the
/// callers are acknowledged.
pub(crate) type CommitFn = Box<dyn Fn(Vec<(u64, Entries)>) + Send>;

fn table_code(t: Table) -> u8 {
    match t {
        Table::Events => 0,
        Table::Alerts => 1,
        Table::Baselines => 2,
        Table::Inventory => 3,
    }
}

fn table_from_code(c: u8) -> Option<Table> {
    Table::ALL.into_iter().find(|t| table_code(*t) == c)
}

fn io_err(path: &Path, source: std::io::Error) -> StoreError {
    StoreError::Wal {
        path: path.to_path_buf(),
        source,
    }
}

fn invalid(path: &Path, msg: String) -> StoreError {
    io_err(
        path,
        std::io::Error::new(std::io::ErrorKind::InvalidData, msg),
    )
}

/// One record's body, encoded and checksummed on the caller's task so the writer thread only frames it.
pub(crate) struct Body {
    bytes: Vec<u8>,
    crc: crc32fast::Hasher,
}

impl Body {
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// Encodes the body of one record (the caller's share of the work, done before queueing).
pub(crate) fn encode_body(entries: &[(Table, RecordBatch)]) -> Result<Body, StoreError> {
    let mut body = Vec::with_capacity(
        4 + entries
            .iter()
            .map(|(_, b)| b.get_array_memory_size())
            .sum::<usize>(),
    );
    body.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (table, batch) in entries {
        body.push(table_code(*table));
        let len_at = body.len();
        body.extend_from_slice(&[0; 4]);
        let start = body.len();
        {
            let mut w = StreamWriter::try_new(&mut body, &batch.schema())?;
            w.write(batch)?;
            w.finish()?;
        }
        let ipc_len = (body.len() - start) as u32;
        body[len_at..len_at + 4].copy_from_slice(&ipc_len.to_le_bytes());
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(&body);
    Ok(Body { bytes: body, crc })
}

fn decode_body(body: &[u8]) -> Result<Entries, String> {
    let take = |at: &mut usize, n: usize| -> Result<&[u8], String> {
        let s = body
            .get(*at..*at + n)
            .ok_or("record body is shorter than its contents")?;
        *at += n;
        Ok(s)
    };
    let mut at = 0;
    let n = u32::from_le_bytes(take(&mut at, 4)?.try_into().map_err(|_| "bad count")?);
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let code = take(&mut at, 1)?[0];
        let table = table_from_code(code).ok_or(format!("unknown table code {code}"))?;
        let len =
            u32::from_le_bytes(take(&mut at, 4)?.try_into().map_err(|_| "bad length")?) as usize;
        let ipc = take(&mut at, len)?;
        let reader = StreamReader::try_new(Cursor::new(ipc), None).map_err(|e| e.to_string())?;
        for batch in reader {
            out.push((table, batch.map_err(|e| e.to_string())?));
        }
    }
    Ok(out)
}

/// A record's header (length, CRC, sequence); the body follows it in the file as the caller encoded it, so
/// the writer never copies bodies into one buffer (they are most of the bytes of a busy WAL).
fn frame_header(seq: u64, body: &Body) -> FrameHeader {
    let seq_bytes = seq.to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq_bytes);
    crc.combine(&body.crc);
    let mut h: FrameHeader = [0; HEADER + SEQ];
    h[..4].copy_from_slice(&((SEQ + body.bytes.len()) as u32).to_le_bytes());
    h[4..HEADER].copy_from_slice(&crc.finalize().to_le_bytes());
    h[HEADER..].copy_from_slice(&seq_bytes);
    h
}

/// `write_all` over several buffers (std's `write_all_vectored` is not stable yet). `File::write_vectored`
/// caps each call at the system's iovec limit; the loop writes the rest.
fn write_all_vectored(file: &mut File, mut bufs: &mut [IoSlice<'_>]) -> std::io::Result<()> {
    while !bufs.is_empty() {
        match file.write_vectored(bufs) {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    "failed to write the whole record group",
                ))
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Announces an append before its body is encoded, so the writer waits (up to the group-commit window)
/// for callers that are still encoding rather than fsyncing without them. Dropping it unsent withdraws it.
pub(crate) struct Reservation {
    in_flight: Arc<AtomicUsize>,
    armed: bool,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.armed {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(format!("{first_seq:020}.wal"))
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_err(dir, e))
}

/// A segment file and the sequence numbers it holds.
#[derive(Debug, Clone)]
pub(crate) struct Segment {
    pub path: PathBuf,
    /// Highest sequence number written to it; `first_seq - 1` while empty.
    pub last_seq: u64,
    /// Records in it (the `rows` of its audit chain entry).
    pub records: u64,
}

/// A segment's path as the audit chain names it: `wal/<file name>`, relative to `data_dir`.
pub(crate) fn chain_name(path: &Path) -> String {
    format!(
        "wal/{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default()
    )
}

/// What `replay` found.
pub(crate) struct Replay {
    /// Records with `seq > after_seq`, in order.
    pub records: Vec<(u64, Entries)>,
    /// Highest sequence number seen anywhere (covered or not), so numbering continues above it.
    pub max_seq: u64,
    /// Lowest sequence number seen anywhere (covered or not); `None` when the WAL holds no record.
    pub min_seq: Option<u64>,
    /// Segments still holding uncovered records, oldest first.
    pub segments: Vec<Segment>,
    /// Bytes cut off torn tails.
    pub truncated_bytes: u64,
    /// Segments deleted because the manifest covers all their records (the audit chain retires them).
    pub removed: Vec<PathBuf>,
    /// Sealed segments whose bytes no longer hash to their seal, set aside unread (see [`replay`]).
    pub quarantined: Vec<PathBuf>,
    /// The highest sequence number a quarantined segment was sealed with, so numbering continues above it
    /// (a new segment must not take a quarantined one's name).
    pub quarantined_max_seq: u64,
}

/// A closed segment as the audit chain sealed it.
pub(crate) struct SealedSegment {
    pub sha256: String,
    /// Its records.
    pub records: u64,
}

/// The suffix a sealed segment that fails its hash is renamed with: out of the WAL, kept as evidence.
pub(crate) const QUARANTINE_SUFFIX: &str = ".tampered";

/// The record framed at `at`: its sequence number, its payload (sequence number first) and where the next
/// frame starts. `None` at the end, and at a frame that is short or fails its CRC (a torn write).
fn next_frame(data: &[u8], at: usize) -> Option<(u64, &[u8], usize)> {
    let header = data.get(at..at.checked_add(HEADER)?)?;
    let len = u32::from_le_bytes(header[0..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
    let end = at.checked_add(HEADER)?.checked_add(len)?;
    let payload = data.get(at + HEADER..end)?;
    if len < SEQ || crc32fast::hash(payload) != crc {
        return None;
    }
    let seq = u64::from_le_bytes(payload[..SEQ].try_into().ok()?);
    Some((seq, payload, end))
}

/// The lowest and highest sequence numbers of whole records in `dir`'s segments, without changing anything
/// (for `verify`, which may run beside the server); `None` when there is no record.
pub(crate) fn seq_range(dir: &Path) -> Result<Option<(u64, u64)>, StoreError> {
    let mut range: Option<(u64, u64)> = None;
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        if path.extension().is_none_or(|x| x != "wal") {
            continue;
        }
        let data = match std::fs::read(&path) {
            Ok(d) => d,
            // Deleted by the running server since the listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(&path, e)),
        };
        let mut at = 0;
        while let Some((seq, _, next)) = next_frame(&data, at) {
            range = Some(range.map_or((seq, seq), |(lo, hi)| (lo.min(seq), hi.max(seq))));
            at = next;
        }
    }
    Ok(range)
}

/// Reads every segment in order. A record that is short or fails its CRC is a write torn by a crash: the
/// segment is truncated there (the record was never acknowledged) and replay goes on. Segments whose records
/// are all covered by the manifest (`<= after_seq`), and empty ones, are deleted.
///
/// A crash tears only the segment being written, which is never sealed. A segment the audit chain sealed
/// (`sealed`, by chain name) whose bytes no longer hash to its seal was changed since: its records are not
/// trusted (not replayed), and it is neither truncated nor deleted, which would erase the change, but
/// renamed with [`QUARANTINE_SUFFIX`] so that replay skips it and `verify` reports it missing.
pub(crate) fn replay(
    dir: &Path,
    after_seq: u64,
    sealed: &HashMap<String, SealedSegment>,
) -> Result<Replay, StoreError> {
    std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
    let mut names: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        let first = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".wal"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            names.push((first, path));
        }
    }
    names.sort();
    let mut out = Replay {
        records: Vec::new(),
        max_seq: after_seq,
        min_seq: None,
        segments: Vec::new(),
        truncated_bytes: 0,
        removed: Vec::new(),
        quarantined: Vec::new(),
        quarantined_max_seq: 0,
    };
    let mut removed_any = false;
    for (first_seq, path) in names {
        let mut data = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut data))
            .map_err(|e| io_err(&path, e))?;
        if let Some(seal) = sealed.get(&chain_name(&path)) {
            if hex::encode(Sha256::digest(&data)) != seal.sha256 {
                let aside = path.with_extension(format!("wal{QUARANTINE_SUFFIX}"));
                std::fs::rename(&path, &aside).map_err(|e| io_err(&path, e))?;
                tracing::error!(segment = %path.display(), quarantined = %aside.display(), "a sealed WAL segment no longer matches its SHA-256: not replayed, set aside; `vigil verify` reports it");
                out.quarantined_max_seq = out
                    .quarantined_max_seq
                    .max(first_seq.saturating_add(seal.records).saturating_sub(1));
                out.quarantined.push(aside);
                removed_any = true;
                continue;
            }
        }
        let mut at = 0usize;
        let mut last_seq = first_seq.saturating_sub(1);
        let mut records = 0;
        while let Some((seq, payload, next)) = next_frame(&data, at) {
            if seq > after_seq {
                let entries = decode_body(&payload[SEQ..]).map_err(|e| {
                    invalid(
                        &path,
                        format!("record {seq} passed its CRC but does not decode: {e}"),
                    )
                })?;
                out.records.push((seq, entries));
            }
            last_seq = seq;
            records += 1;
            out.max_seq = out.max_seq.max(seq);
            out.min_seq = Some(out.min_seq.map_or(seq, |m| m.min(seq)));
            at = next;
        }
        if at < data.len() {
            let cut = (data.len() - at) as u64;
            tracing::warn!(segment = %path.display(), offset = at, bytes = cut, "truncating torn WAL tail");
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|e| io_err(&path, e))?;
            f.set_len(at as u64)
                .and_then(|_| f.sync_all())
                .map_err(|e| io_err(&path, e))?;
            out.truncated_bytes += cut;
        }
        if at == 0 || last_seq <= after_seq {
            std::fs::remove_file(&path).map_err(|e| io_err(&path, e))?;
            removed_any = true;
            out.removed.push(path);
        } else {
            out.segments.push(Segment {
                path,
                last_seq,
                records,
            });
        }
    }
    if removed_any {
        sync_dir(dir)?;
    }
    Ok(out)
}

/// Where an append's sequence number (or its failure) goes once the group it was written in is durable.
type AppendAck = oneshot::Sender<Result<u64, String>>;

enum Request {
    Append {
        body: Body,
        entries: Entries,
        ack: AppendAck,
    },
    Roll {
        ack: oneshot::Sender<Result<(), String>>,
    },
}

/// A record handed to the writer thread, until it is fsynced (or its write failed).
pub(crate) struct Appended {
    dir: PathBuf,
    done: oneshot::Receiver<Result<u64, String>>,
}

impl Appended {
    /// The record's sequence number once it is fsynced and its rows are in the buffer.
    pub async fn outcome(&mut self) -> Result<u64, StoreError> {
        match (&mut self.done).await {
            Ok(Ok(seq)) => Ok(seq),
            Ok(Err(msg)) => Err(io_err(&self.dir, std::io::Error::other(msg))),
            Err(_) => Err(StoreError::Closed),
        }
    }
}

/// Handle to the WAL writer thread.
pub(crate) struct Wal {
    dir: PathBuf,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
    /// Appends queued or about to be queued; lets the writer stop waiting once everyone is in the group.
    in_flight: Arc<AtomicUsize>,
    segments: Arc<Mutex<Vec<Segment>>>,
    fsyncs: Arc<AtomicU64>,
    audit: Option<Arc<AuditLog>>,
}

pub(crate) struct WalOptions {
    pub dir: PathBuf,
    pub next_seq: u64,
    pub segment_bytes: u64,
    pub group_commit_window: Duration,
    /// Segments from replay still holding uncovered records.
    pub sealed: Vec<Segment>,
    /// Where closed segments are sealed and deleted ones retired; `None` in unit tests of the WAL alone.
    pub audit: Option<Arc<AuditLog>>,
}

struct Writer {
    dir: PathBuf,
    file: File,
    size: u64,
    next_seq: u64,
    segment_bytes: u64,
    window: Duration,
    segments: Arc<Mutex<Vec<Segment>>>,
    in_flight: Arc<AtomicUsize>,
    fsyncs: Arc<AtomicU64>,
    commit: CommitFn,
    /// After a failed write or fsync the file's state is unknown: every later append fails.
    failed: Option<String>,
    /// SHA-256 of the active segment so far, fed as it is written, so closing it needs no re-read.
    hasher: Sha256,
    audit: Option<Arc<AuditLog>>,
    /// After a failed size-triggered roll, when to try again (not on every group while the cause lasts).
    roll_retry_at: Option<Instant>,
}

/// How long appends go on into an over-size segment after a roll failed, before the roll is tried again.
const ROLL_RETRY: Duration = Duration::from_secs(1);

impl Wal {
    pub fn start(opts: WalOptions, commit: CommitFn) -> Result<Wal, StoreError> {
        let segments = Arc::new(Mutex::new(opts.sealed));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let fsyncs = Arc::new(AtomicU64::new(0));
        let (file, seg) = new_segment(&opts.dir, opts.next_seq)?;
        segments.lock().push(seg);
        let mut writer = Writer {
            dir: opts.dir.clone(),
            file,
            size: 0,
            next_seq: opts.next_seq,
            segment_bytes: opts.segment_bytes,
            window: opts.group_commit_window,
            segments: segments.clone(),
            in_flight: in_flight.clone(),
            fsyncs: fsyncs.clone(),
            commit,
            failed: None,
            hasher: Sha256::new(),
            audit: opts.audit.clone(),
            roll_retry_at: None,
        };
        let (tx, rx) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("vigil-wal".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| io_err(&opts.dir, e))?;
        Ok(Wal {
            dir: opts.dir,
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(Some(thread)),
            in_flight,
            segments,
            fsyncs,
            audit: opts.audit,
        })
    }

    fn send(&self, req: Request) -> Result<(), StoreError> {
        let guard = self.tx.lock();
        let tx = guard.as_ref().ok_or(StoreError::Closed)?;
        tx.send(req).map_err(|_| StoreError::Closed)
    }

    /// Call before encoding an append; pass the reservation to [`Wal::append`].
    pub fn reserve(&self) -> Reservation {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Reservation {
            in_flight: self.in_flight.clone(),
            armed: true,
        }
    }

    /// Appends one record; resolves after it is fsynced and its rows are in the buffer. Returns its sequence.
    #[cfg(test)]
    pub async fn append(
        &self,
        reservation: Reservation,
        body: Body,
        entries: Entries,
    ) -> Result<u64, StoreError> {
        self.submit(reservation, body, entries)?.outcome().await
    }

    /// Hands one record to the writer thread, which writes it whether or not the returned [`Appended`] is
    /// awaited: a caller that stops waiting can hand it on to learn how the write ended.
    pub fn submit(
        &self,
        mut reservation: Reservation,
        body: Body,
        entries: Entries,
    ) -> Result<Appended, StoreError> {
        let (ack, done) = oneshot::channel();
        self.send(Request::Append { body, entries, ack })?;
        // From here the writer thread accounts for it.
        reservation.armed = false;
        Ok(Appended {
            dir: self.dir.clone(),
            done,
        })
    }

    /// Starts a new segment so the current one can be deleted once a flush covers it.
    pub async fn roll(&self) -> Result<(), StoreError> {
        let (ack, done) = oneshot::channel();
        self.send(Request::Roll { ack })?;
        match done.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(msg)) => Err(io_err(&self.dir, std::io::Error::other(msg))),
            Err(_) => Err(StoreError::Closed),
        }
    }

    /// Deletes sealed segments whose every record is `<= covered` (now in Parquet and in the manifest).
    #[cfg(test)]
    pub fn delete_covered(&self, covered: u64) -> Result<usize, StoreError> {
        self.retirer().delete_covered(covered)
    }

    /// [`Wal::delete_covered`] on a blocking thread: unlinking a segment of hundreds of megabytes, the audit
    /// record and the directory fsync would otherwise stall an async worker that requests are waiting on.
    pub async fn delete_covered_blocking(&self, covered: u64) -> Result<usize, StoreError> {
        let retirer = self.retirer();
        tokio::task::spawn_blocking(move || retirer.delete_covered(covered))
            .await
            .map_err(|e| {
                io_err(
                    &self.dir,
                    std::io::Error::other(format!("WAL delete task: {e}")),
                )
            })?
    }

    fn retirer(&self) -> Retirer {
        Retirer {
            dir: self.dir.clone(),
            segments: self.segments.clone(),
            audit: self.audit.clone(),
        }
    }

    /// Segment files currently on disk (for tests and diagnostics).
    pub fn segment_count(&self) -> usize {
        self.segments.lock().len()
    }

    /// fsyncs issued so far; below the number of appends when group commit shares them.
    pub fn fsync_count(&self) -> u64 {
        self.fsyncs.load(Ordering::Relaxed)
    }

    /// Stops the writer thread after it has answered everything already queued.
    pub fn close(&self) {
        self.tx.lock().take();
        if let Some(t) = self.thread.lock().take() {
            let _ = t.join();
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Dropping the sender ends the thread; not joining keeps drop cheap (a crash test drops the store).
        self.tx.lock().take();
    }
}

fn new_segment(dir: &Path, first_seq: u64) -> Result<(File, Segment), StoreError> {
    let path = segment_path(dir, first_seq);
    let file = OpenOptions::new()
        .create_new(true)
        .append(true)
        .open(&path)
        .map_err(|e| io_err(&path, e))?;
    // The new name must survive a crash as much as the records written into it.
    sync_dir(dir)?;
    Ok((
        file,
        Segment {
            path,
            last_seq: first_seq.saturating_sub(1),
            records: 0,
        },
    ))
}

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Request>) {
        while let Ok(first) = rx.recv() {
            let mut group = vec![first];
            while let Ok(r) = rx.try_recv() {
                group.push(r);
            }
            let deadline = Instant::now() + self.window;
            loop {
                let appends = group
                    .iter()
                    .filter(|r| matches!(r, Request::Append { .. }))
                    .count();
                if appends >= self.in_flight.load(Ordering::SeqCst) {
                    break;
                }
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match rx.recv_timeout(deadline - now) {
                    Ok(r) => group.push(r),
                    Err(_) => break,
                }
            }
            self.process(group);
        }
    }

    fn process(&mut self, group: Vec<Request>) {
        let mut frames: Vec<(FrameHeader, Body)> = Vec::new();
        let mut appended: Vec<(u64, Entries, AppendAck)> = Vec::new();
        let mut rolls = Vec::new();
        for req in group {
            match req {
                Request::Append { body, entries, ack } => {
                    if self.failed.is_none()
                        && frames.is_empty()
                        && self.size >= self.segment_bytes
                        && self.roll_retry_at.is_none_or(|at| Instant::now() >= at)
                    {
                        // Nothing is wrong with the active segment when a new one cannot be made (EMFILE,
                        // a full disk for a moment): appends go on into it and the roll is retried.
                        match self.roll() {
                            Ok(()) => self.roll_retry_at = None,
                            // The directory itself is gone: the active segment cannot be replayed either.
                            Err(e) if !self.active_segment_exists() => {
                                self.failed = Some(e.to_string());
                            }
                            Err(e) => {
                                metrics().wal_roll_failures.inc();
                                tracing::warn!(error = %e, "rolling the WAL segment failed; appending to the current one and retrying in 1 s");
                                self.roll_retry_at = Some(Instant::now() + ROLL_RETRY);
                            }
                        }
                    }
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    frames.push((frame_header(seq, &body), body));
                    appended.push((seq, entries, ack));
                }
                Request::Roll { ack } => rolls.push(ack),
            }
        }
        let bytes: usize = frames.iter().map(|(h, b)| h.len() + b.bytes.len()).sum();
        let result = match &self.failed {
            Some(msg) => Err(msg.clone()),
            None if appended.is_empty() => Ok(()),
            None => self.write_and_sync(
                &frames,
                bytes,
                appended.last().map(|a| a.0).unwrap_or_default(),
                appended.len(),
            ),
        };
        if let Err(msg) = &result {
            self.failed.get_or_insert_with(|| msg.clone());
        }
        let n = appended.len();
        match result {
            Ok(()) => {
                let m = metrics();
                m.wal_appends.inc_by(n as u64);
                m.wal_bytes.inc_by(bytes as u64);
                let mut acks = Vec::with_capacity(n);
                let mut records = Vec::with_capacity(n);
                for (seq, entries, ack) in appended {
                    records.push((seq, entries));
                    acks.push((seq, ack));
                }
                if !records.is_empty() {
                    (self.commit)(records);
                }
                self.in_flight.fetch_sub(n, Ordering::SeqCst);
                for (seq, ack) in acks {
                    let _ = ack.send(Ok(seq));
                }
                // After the acknowledgements: callers do not wait for the audit hash of their bytes.
                for (header, body) in &frames {
                    self.hasher.update(header);
                    self.hasher.update(&body.bytes);
                }
            }
            Err(msg) => {
                self.in_flight.fetch_sub(n, Ordering::SeqCst);
                for (_, _, ack) in appended {
                    let _ = ack.send(Err(msg.clone()));
                }
            }
        }
        for ack in rolls {
            let r = match &self.failed {
                Some(msg) => Err(msg.clone()),
                None if self.size == 0 => Ok(()),
                None => self.roll().map_err(|e| e.to_string()),
            };
            let _ = ack.send(r);
        }
    }

    fn write_and_sync(
        &mut self,
        frames: &[(FrameHeader, Body)],
        bytes: usize,
        last_seq: u64,
        records: usize,
    ) -> Result<(), String> {
        let path = self
            .segments
            .lock()
            .last()
            .map(|s| s.path.clone())
            .unwrap_or_default();
        let mut slices: Vec<IoSlice<'_>> = frames
            .iter()
            .flat_map(|(h, b)| [IoSlice::new(h), IoSlice::new(&b.bytes)])
            .collect();
        write_all_vectored(&mut self.file, &mut slices)
            .map_err(|e| format!("write {}: {e}", path.display()))?;
        let started = Instant::now();
        self.file
            .sync_data()
            .map_err(|e| format!("fsync {}: {e}", path.display()))?;
        metrics()
            .wal_fsync_seconds
            .observe(started.elapsed().as_secs_f64());
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.size += bytes as u64;
        if let Some(active) = self.segments.lock().last_mut() {
            active.last_seq = last_seq;
            active.records += records as u64;
        }
        Ok(())
    }

    fn active_segment_exists(&self) -> bool {
        let active = self.segments.lock().last().map(|s| s.path.clone());
        active.is_some_and(|p| p.exists())
    }

    fn roll(&mut self) -> Result<(), StoreError> {
        // The new segment first: if it cannot be made, appends go on into the active one, which must then
        // not be sealed yet (its hash would not cover them, and the next start would set it aside).
        let (file, seg) = new_segment(&self.dir, self.next_seq)?;
        self.seal_active();
        self.file = file;
        self.size = 0;
        self.segments.lock().push(seg);
        Ok(())
    }

    /// Records the active segment's hash as it is closed (every byte of it is fsynced by now). A failure is
    /// logged, not fatal: the segment stays unsealed and the next `open` seals it from disk.
    fn seal_active(&mut self) {
        let sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        let Some(audit) = &self.audit else { return };
        let Some(active) = self.segments.lock().last().cloned() else {
            return;
        };
        if self.size == 0 {
            return;
        }
        let mut draft = Draft::new(Op::SealWal, None);
        draft.files.push(FileRecord {
            path: chain_name(&active.path),
            sha256,
            size: self.size,
            rows: active.records,
        });
        if let Err(e) = audit.append(vec![draft]) {
            tracing::error!(segment = %active.path.display(), error = %e, "sealing a WAL segment in the audit chain failed");
        }
    }
}

/// What retiring covered segments needs, detached from [`Wal`] so that it can run on a blocking thread.
struct Retirer {
    dir: PathBuf,
    segments: Arc<Mutex<Vec<Segment>>>,
    audit: Option<Arc<AuditLog>>,
}

impl Retirer {
    fn delete_covered(&self, covered: u64) -> Result<usize, StoreError> {
        let doomed: Vec<Segment> = {
            let mut segs = self.segments.lock();
            let sealed = segs.len().saturating_sub(1); // the last one is the active segment
            let mut doomed = Vec::new();
            let mut i = 0;
            let mut seen = 0;
            while seen < sealed {
                if segs[i].last_seq <= covered {
                    doomed.push(segs.remove(i));
                } else {
                    i += 1;
                }
                seen += 1;
            }
            doomed
        };
        if let Some(audit) = &self.audit {
            let mut draft = Draft::new(Op::RetireWal, None);
            draft.removed = doomed
                .iter()
                .map(|s| chain_name(&s.path))
                .filter(|p| audit.is_live(p))
                .collect();
            if let Err(e) = audit.append(vec![draft]) {
                // Not recorded, so not deleted: the next flush tries again.
                self.segments.lock().splice(0..0, doomed);
                return Err(e);
            }
        }
        for seg in &doomed {
            std::fs::remove_file(&seg.path).map_err(|e| io_err(&seg.path, e))?;
        }
        if !doomed.is_empty() {
            sync_dir(&self.dir)?;
        }
        Ok(doomed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    fn batch(n: i64) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("x", DataType::Int64, false),
            Field::new("s", DataType::Utf8, true),
        ]));
        let xs: Vec<i64> = (0..n).collect();
        let ss: Vec<Option<String>> = (0..n)
            .map(|i| (i % 2 == 0).then(|| format!("v{i}")))
            .collect();
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(xs)),
                Arc::new(StringArray::from(ss)),
            ],
        )
        .unwrap()
    }

    fn collect() -> (CommitFn, Arc<Mutex<Vec<u64>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        (
            Box::new(move |recs: Vec<(u64, Entries)>| s.lock().extend(recs.iter().map(|r| r.0))),
            seen,
        )
    }

    #[test]
    fn body_round_trips_several_tables() {
        let entries = vec![(Table::Events, batch(3)), (Table::Alerts, batch(1))];
        let body = encode_body(&entries).unwrap();
        assert_eq!(body.crc.clone().finalize(), crc32fast::hash(&body.bytes));
        let decoded = decode_body(&body.bytes).unwrap();
        assert_eq!(decoded, entries);
    }

    #[tokio::test]
    async fn appends_replay_in_order_and_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        let (commit, seen) = collect();
        let opts = WalOptions {
            dir: wal_dir.clone(),
            next_seq: 1,
            segment_bytes: 1 << 20,
            group_commit_window: Duration::from_millis(1),
            sealed: vec![],
            audit: None,
        };
        let wal = Wal::start(opts, commit).unwrap();
        for n in 1..=3 {
            let entries = vec![(Table::Events, batch(n))];
            assert_eq!(
                wal.append(wal.reserve(), encode_body(&entries).unwrap(), entries)
                    .await
                    .unwrap(),
                n as u64
            );
        }
        assert_eq!(*seen.lock(), vec![1, 2, 3]);
        wal.close();
        // Tear the last record: chop 5 bytes off.
        let seg = segment_path(&wal_dir, 1);
        let len = std::fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let r = replay(&wal_dir, 0, &HashMap::new()).unwrap();
        assert_eq!(
            r.records.iter().map(|r| r.0).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(r.records[1].1[0].1.num_rows(), 2);
        assert_eq!(r.max_seq, 2);
        assert!(r.truncated_bytes > 0);
        // Truncated for good: a second replay sees a clean file with the same records.
        let r = replay(&wal_dir, 0, &HashMap::new()).unwrap();
        assert_eq!((r.records.len(), r.truncated_bytes), (2, 0));
        // A flipped byte inside the second record fails its CRC.
        let mut data = std::fs::read(&seg).unwrap();
        let last = data.len() - 3;
        data[last] ^= 0xff;
        std::fs::write(&seg, &data).unwrap();
        assert_eq!(
            replay(&wal_dir, 0, &HashMap::new()).unwrap().records.len(),
            1
        );
        // Everything covered: the segment is deleted.
        let r = replay(&wal_dir, 5, &HashMap::new()).unwrap();
        assert!(r.records.is_empty() && r.segments.is_empty());
        assert!(!seg.exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_appends_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let (commit, seen) = collect();
        let opts = WalOptions {
            dir: dir.path().to_path_buf(),
            next_seq: 1,
            segment_bytes: 1 << 30,
            group_commit_window: Duration::from_millis(50),
            sealed: vec![],
            audit: None,
        };
        let wal = Arc::new(Wal::start(opts, commit).unwrap());
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let wal = wal.clone();
                tokio::spawn(async move {
                    let entries = vec![(Table::Events, batch(4))];
                    wal.append(wal.reserve(), encode_body(&entries).unwrap(), entries)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut seqs = Vec::new();
        for t in tasks {
            seqs.push(t.await.unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (1..=16).collect::<Vec<u64>>());
        // The buffer received them in sequence order.
        assert_eq!(*seen.lock(), (1..=16).collect::<Vec<u64>>());
        assert!(
            wal.fsync_count() < 16,
            "16 concurrent appends took {} fsyncs",
            wal.fsync_count()
        );
        wal.close();
        assert_eq!(
            replay(dir.path(), 0, &HashMap::new())
                .unwrap()
                .records
                .len(),
            16
        );
    }

    #[tokio::test]
    async fn segments_roll_and_covered_ones_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let (commit, _) = collect();
        let opts = WalOptions {
            dir: dir.path().to_path_buf(),
            next_seq: 10,
            segment_bytes: 1, // every append after the first starts a segment
            group_commit_window: Duration::ZERO,
            sealed: vec![],
            audit: None,
        };
        let wal = Wal::start(opts, commit).unwrap();
        for _ in 0..3 {
            let entries = vec![(Table::Events, batch(2))];
            wal.append(wal.reserve(), encode_body(&entries).unwrap(), entries)
                .await
                .unwrap();
        }
        assert_eq!(wal.segment_count(), 3);
        assert_eq!(wal.delete_covered(11).unwrap(), 2);
        assert_eq!(wal.segment_count(), 1, "the active segment stays");
        wal.roll().await.unwrap();
        assert_eq!(wal.delete_covered(12).unwrap(), 1);
        wal.close();
        let r = replay(dir.path(), 12, &HashMap::new()).unwrap();
        assert!(r.records.is_empty());
        assert_eq!(r.max_seq, 12);
    }

    /// A size-triggered roll that cannot create the next segment does not stop ingestion: appends go on
    /// into the active segment, and the roll happens once the cause is gone.
    #[tokio::test]
    async fn a_failed_size_roll_keeps_appending_and_retries() {
        let dir = tempfile::tempdir().unwrap();
        let (commit, _) = collect();
        let opts = WalOptions {
            dir: dir.path().to_path_buf(),
            next_seq: 1,
            segment_bytes: 1,
            group_commit_window: Duration::ZERO,
            sealed: vec![],
            audit: None,
        };
        let wal = Wal::start(opts, commit).unwrap();
        let append = || async {
            let entries = vec![(Table::Events, batch(2))];
            wal.append(wal.reserve(), encode_body(&entries).unwrap(), entries)
                .await
        };
        append().await.unwrap();
        // The next segment's name is taken: the size-triggered roll fails.
        let blocker = segment_path(dir.path(), 2);
        std::fs::write(&blocker, b"").unwrap();
        let failures = metrics().wal_roll_failures.get();
        append()
            .await
            .expect("an append after a failed roll is stored");
        append().await.expect("and the next one");
        assert!(metrics().wal_roll_failures.get() > failures);
        assert_eq!(wal.segment_count(), 1);
        std::fs::remove_file(&blocker).unwrap();
        tokio::time::sleep(ROLL_RETRY + Duration::from_millis(100)).await;
        append().await.unwrap();
        assert_eq!(wal.segment_count(), 2, "rolled once it could");
        wal.close();
    }

    /// A roll that cannot create the next segment leaves the active one unsealed: appends go on into it,
    /// and a seal taken before them would not match it (the next start would set it aside, records lost).
    #[tokio::test]
    async fn a_failed_roll_seals_nothing_and_the_segment_seals_whole_later() {
        let dir = tempfile::tempdir().unwrap();
        let wal_dir = dir.path().join("wal");
        std::fs::create_dir_all(&wal_dir).unwrap();
        let audit = Arc::new(AuditLog::open(dir.path()).unwrap());
        let (commit, _) = collect();
        let opts = WalOptions {
            dir: wal_dir.clone(),
            next_seq: 1,
            segment_bytes: 1 << 20,
            group_commit_window: Duration::ZERO,
            sealed: vec![],
            audit: Some(audit.clone()),
        };
        let wal = Wal::start(opts, commit).unwrap();
        let append = || async {
            let entries = vec![(Table::Events, batch(2))];
            wal.append(wal.reserve(), encode_body(&entries).unwrap(), entries)
                .await
                .unwrap()
        };
        append().await;
        // The next segment's name is taken: creating it fails.
        let blocker = segment_path(&wal_dir, 2);
        std::fs::write(&blocker, b"").unwrap();
        assert!(wal.roll().await.is_err());
        assert!(audit.state().live.is_empty(), "nothing sealed");
        append().await;
        std::fs::remove_file(&blocker).unwrap();
        // Numbering went on: the next segment starts after the second record.
        wal.roll().await.unwrap();
        let sealed = audit.state().live;
        let (name, seal) = sealed.iter().next().expect("the first segment is sealed");
        let bytes = std::fs::read(dir.path().join(name)).unwrap();
        assert_eq!(hex::encode(Sha256::digest(&bytes)), seal.sha256);
        assert_eq!(seal.rows, 2);
        wal.close();
    }
}
